"""Wire formats: varint framing and the protobuf codecs for our stream protocols."""
