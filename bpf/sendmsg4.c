/* sendmsg4.c: cgroup/sendmsg4. A datagram sent with an explicit destination (sendto/sendmsg on an
 * unconnected UDP socket) to an imported UDP service's VIP:port goes to that service's relay on
 * the agent instead. Per datagram, nothing is recorded: the relay knows its service, and egress.c
 * records who sent. */
#include "clusterlink.h"

int cl_sendmsg4(struct bpf_sock_addr *ctx)
{
    struct cl_addr vip = {};
    vip.ip = ctx->user_ip4;
    vip.port = (__u16)ctx->user_port;
    vip.proto = IPPROTO_UDP;
    vip.pad = 0;

    struct cl_addr *relay = cl_services.lookup(&vip);
    if (!relay)
        return CL_PROCEED;
    ctx->user_ip4 = relay->ip;
    ctx->user_port = (__u32)relay->port;
    return CL_PROCEED;
}
