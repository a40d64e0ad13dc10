/* sendmsg6.c: cgroup/sendmsg6. A datagram an AF_INET6 socket sends with an explicit destination
 * (sendto on an unconnected socket) to an imported UDP service's VIP6:port goes to that service's
 * relay on the agent (v4-mapped: the datagram leaves as IPv4). */
#include "clusterlink.h"

int cl_sendmsg6(struct bpf_sock_addr *ctx)
{
    struct cl_addr6 vip = {};
    vip.ip[0] = ctx->user_ip6[0];
    vip.ip[1] = ctx->user_ip6[1];
    vip.ip[2] = ctx->user_ip6[2];
    vip.ip[3] = ctx->user_ip6[3];
    vip.port = (__u16)ctx->user_port;
    vip.proto = IPPROTO_UDP;
    vip.pad = 0;

    struct cl_addr6 *relay = cl_services6.lookup(&vip);
    if (!relay)
        return CL_PROCEED;
    ctx->user_ip6[0] = relay->ip[0];
    ctx->user_ip6[1] = relay->ip[1];
    ctx->user_ip6[2] = relay->ip[2];
    ctx->user_ip6[3] = relay->ip[3];
    ctx->user_port = (__u32)relay->port;
    return CL_PROCEED;
}
