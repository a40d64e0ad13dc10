"""The ClusterLink object model: kinds, schemas, YAML parsing and validation."""
