/* sockops.c: sock_ops. When a redirected connection is established (ACTIVE_ESTABLISHED_CB: the
 * client got the SYN-ACK, before its final ACK reaches the proxy), its record is copied from the
 * socket-cookie key to the client's (local ip, local port) key, which is what the proxy sees as
 * the peer address of the accepted connection. ACTIVE_ESTABLISHED_CB is always delivered; no
 * bpf_sock_ops_cb_flags_set() is needed. */
#include "clusterlink.h"

int cl_sockops(struct bpf_sock_ops *skops)
{
    if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        return CL_PROCEED;
    if (skops->family != 2 /* AF_INET */)
        return CL_PROCEED;

    __u64 cookie = bpf_get_socket_cookie(skops);
    struct cl_orig *orig = cl_cookie_orig.lookup(&cookie);
    if (!orig)
        return CL_PROCEED;

    struct cl_addr client = {};
    client.ip = skops->local_ip4;
    client.port = cl_htons(skops->local_port);   /* local_port is in host order */
    client.proto = IPPROTO_TCP;
    client.pad = 0;
    struct cl_orig copy = *orig;
    cl_tuple_orig.update(&client, &copy);
    return CL_PROCEED;
}
