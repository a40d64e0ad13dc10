"""The ClusterLink peer protocol: what two peers' gateways (and a control plane's heartbeats) say.

One mTLS port per peer, HTTP/1.1 (h11) on it: `GET /healthz` (our labels in a header),
`POST /authz` (a JSON request answered with an access token) and `CONNECT` (a bearer token, then
raw bytes both ways). Wire-compatible with the original ClusterLink.

Modules: `codec` (payloads and headers, pure), `server` and `exchange` (the HTTP framing of the
server and client sides, sans-IO), `framing` (framed tunnels: our compatible extension that lets
a tunnel carry one connection after another, sans-IO), `stream` and `tlsstream` (asyncio byte
streams over TCP and over TLS on memory BIOs, with half-close), `client` (asyncio: health probes and keep-alive connections to a
remote gateway).
"""
