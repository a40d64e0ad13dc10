"""ClusterLink control plane: store, policy engine, peers, imports/exports, agent API and gateway."""
