/* connect6.c: cgroup/connect6. A TCP or UDP connect() of an AF_INET6 socket to an imported
 * service's VIP6:port is rewritten to the node proxy (TCP: its IPv6 address, or ::ffff:<its IPv4
 * address>, the kernel then connects over IPv4: dual-stack pods) or to the service's UDP relay
 * (v4-mapped), as the agent wrote in cl_services6. The original destination and the caller's
 * cgroup are recorded by socket cookie. Every other destination proceeds untouched. */
#include "clusterlink.h"

int cl_connect6(struct bpf_sock_addr *ctx)
{
    __u32 protocol = ctx->protocol;
    if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
        return CL_PROCEED;

    struct cl_addr6 vip = {};
    vip.ip[0] = ctx->user_ip6[0];
    vip.ip[1] = ctx->user_ip6[1];
    vip.ip[2] = ctx->user_ip6[2];
    vip.ip[3] = ctx->user_ip6[3];
    vip.port = (__u16)ctx->user_port;
    vip.proto = (__u8)protocol;
    vip.pad = 0;

    struct cl_addr6 *proxy = cl_services6.lookup(&vip);
    if (!proxy)
        return CL_PROCEED;

    struct cl_orig6 orig = {};
    orig.ip[0] = vip.ip[0];
    orig.ip[1] = vip.ip[1];
    orig.ip[2] = vip.ip[2];
    orig.ip[3] = vip.ip[3];
    orig.port = vip.port;
    orig.proto = vip.proto;
    orig.pad = 0;
    orig.pad2 = 0;
    orig.cgroup_id = bpf_get_current_cgroup_id();
    __u64 cookie = bpf_get_socket_cookie(ctx);
    if (cl_cookie_orig6.update(&cookie, &orig) != 0)
        return CL_PROCEED;

    ctx->user_ip6[0] = proxy->ip[0];
    ctx->user_ip6[1] = proxy->ip[1];
    ctx->user_ip6[2] = proxy->ip[2];
    ctx->user_ip6[3] = proxy->ip[3];
    ctx->user_port = (__u32)proxy->port;
    return CL_PROCEED;
}
