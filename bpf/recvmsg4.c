/* recvmsg4.c: cgroup/recvmsg4. A datagram received from a UDP relay of the agent reports the VIP:port
 * of the relay's service as its source (recvfrom/recvmsg), so the application sees the answer come
 * from the address it asked. */
#include "clusterlink.h"

int cl_recvmsg4(struct bpf_sock_addr *ctx)
{
    struct cl_addr relay = {};
    relay.ip = ctx->user_ip4;
    relay.port = (__u16)ctx->user_port;
    relay.proto = IPPROTO_UDP;
    relay.pad = 0;

    struct cl_addr *vip = cl_udp_relays.lookup(&relay);
    if (!vip)
        return CL_PROCEED;
    ctx->user_ip4 = vip->ip;
    ctx->user_port = (__u32)vip->port;
    return CL_PROCEED;
}
