"""The CRI state machine: pods, containers, names, events. Knows nothing about protobuf."""
