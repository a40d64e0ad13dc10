"""The gateway process: mTLS peer listener (healthz, authz, CONNECT) and the egress side."""
