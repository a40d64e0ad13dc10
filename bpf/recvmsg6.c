/* recvmsg6.c: cgroup/recvmsg6. A datagram an AF_INET6 socket receives from a UDP relay of the agent
 * (seen as ::ffff:<relay>) reports the VIP6:port of the relay's service as its source. */
#include "clusterlink.h"

int cl_recvmsg6(struct bpf_sock_addr *ctx)
{
    struct cl_addr6 relay = {};
    relay.ip[0] = ctx->user_ip6[0];
    relay.ip[1] = ctx->user_ip6[1];
    relay.ip[2] = ctx->user_ip6[2];
    relay.ip[3] = ctx->user_ip6[3];
    relay.port = (__u16)ctx->user_port;
    relay.proto = IPPROTO_UDP;
    relay.pad = 0;

    struct cl_addr6 *vip = cl_udp_relays6.lookup(&relay);
    if (!vip)
        return CL_PROCEED;
    ctx->user_ip6[0] = vip->ip[0];
    ctx->user_ip6[1] = vip->ip[1];
    ctx->user_ip6[2] = vip->ip[2];
    ctx->user_ip6[3] = vip->ip[3];
    ctx->user_port = (__u32)vip->port;
    return CL_PROCEED;
}
