"""The gRPC edge: protobuf <-> domain conversion and error mapping. No Linux here."""
