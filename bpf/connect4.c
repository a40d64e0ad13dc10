/* connect4.c: cgroup/connect4. A TCP or UDP connect() to an imported service's VIP:port is
 * rewritten to the node proxy (TCP) or to the service's UDP relay; the original destination and
 * the caller's cgroup id are recorded by socket cookie (getpeername4 reports it; sockops copies a
 * TCP record to the proxy's key). Everything else proceeds untouched. */
#include "clusterlink.h"

int cl_connect4(struct bpf_sock_addr *ctx)
{
    __u32 protocol = ctx->protocol;
    if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
        return CL_PROCEED;

    struct cl_addr vip = {};
    vip.ip = ctx->user_ip4;
    vip.port = (__u16)ctx->user_port;   /* network order in the low 16 bits */
    vip.proto = (__u8)protocol;
    vip.pad = 0;

    struct cl_addr *proxy = cl_services.lookup(&vip);
    if (!proxy)
        return CL_PROCEED;

    struct cl_orig orig = {};
    orig.ip = vip.ip;
    orig.port = vip.port;
    orig.proto = vip.proto;
    orig.pad = 0;
    orig.cgroup_id = bpf_get_current_cgroup_id();
    __u64 cookie = bpf_get_socket_cookie(ctx);
    /* Without a record the proxy could only reset the connection: leave it alone instead, so
     * the VIP's ordinary route (the Import's Service) still applies. */
    if (cl_cookie_orig.update(&cookie, &orig) != 0)
        return CL_PROCEED;

    ctx->user_ip4 = proxy->ip;
    ctx->user_port = (__u32)proxy->port;
    return CL_PROCEED;
}
