"""Image registry client, references, content store."""
