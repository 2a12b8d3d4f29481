"""OCI runtime backends: the OCIRuntime protocol and its implementations."""
