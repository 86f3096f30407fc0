"""The media plane: frames, codecs, ports with producer/consumer backpressure, pacing, and media apps."""
