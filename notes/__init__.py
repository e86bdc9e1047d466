"""Notes from audio: the transcriber (basic-pitch's model run with onnxruntime) and a stem's notes as MIDI (midi)."""
