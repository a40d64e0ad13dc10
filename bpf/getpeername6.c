/* getpeername6.c: cgroup/getpeername6. A redirected AF_INET6 socket reports the VIP6:port it
 * connected to, not the proxy. */
#include "clusterlink.h"

int cl_getpeername6(struct bpf_sock_addr *ctx)
{
    __u64 cookie = bpf_get_socket_cookie(ctx);
    struct cl_orig6 *orig = cl_cookie_orig6.lookup(&cookie);
    if (!orig)
        return CL_PROCEED;
    ctx->user_ip6[0] = orig->ip[0];
    ctx->user_ip6[1] = orig->ip[1];
    ctx->user_ip6[2] = orig->ip[2];
    ctx->user_ip6[3] = orig->ip[3];
    ctx->user_port = (__u32)orig->port;
    return CL_PROCEED;
}
