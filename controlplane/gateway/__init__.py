"""The gateway process of one peer (`clusterlink-gateway`): the mTLS peer listener (healthz,
authz, CONNECT → exported services) and the egress side (agent preamble or Import target port →
egress policy → load balancing → remote authorization → pooled tunnel).

Pure cores: `lb` (source order), `tokencache` (access tokens held for reuse), `state` (a
snapshot as immutable lookup tables), `decisions` (the attribute maps of both policy checks),
`config`. I/O shells: `relay`, `pool`, `authorizer`, `ingress`, `egress`, `listeners`, `worker`,
`supervisor`, `main`.
"""
