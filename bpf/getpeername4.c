/* getpeername4.c: cgroup/getpeername4. A redirected socket reports the VIP:port it connected to,
 * not the proxy, so the application sees what it asked for. */
#include "clusterlink.h"

int cl_getpeername4(struct bpf_sock_addr *ctx)
{
    __u64 cookie = bpf_get_socket_cookie(ctx);
    struct cl_orig *orig = cl_cookie_orig.lookup(&cookie);
    if (!orig)
        return CL_PROCEED;
    ctx->user_ip4 = orig->ip;
    ctx->user_port = (__u32)orig->port;
    return CL_PROCEED;
}
