"""The built-in data: songs composed as MIDI parts (compose), rendered with a GM SoundFont into the Slakh layout
(`python -m songs.synth`), music21's corpus rendered the same way (`python -m songs.corpus`), and the demo's data."""
