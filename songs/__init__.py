"""The built-in data: songs composed as MIDI parts (compose), rendered with a GM SoundFont into the Slakh layout
(synth), and music21's corpus rendered the same way (corpus). The commands are the root's synth.py and corpus.py."""
