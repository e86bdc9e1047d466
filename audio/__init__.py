"""Audio on disk: reading and writing files (files), the Slakh layout of stem folders (slakh), Slakh's instrument
classes (instruments) and per-second activity maps of stems (activity). The ground everything else stands on."""
