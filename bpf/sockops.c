/* sockops.c: sock_ops. When a redirected connection is established (ACTIVE_ESTABLISHED_CB: the
 * client got the SYN-ACK, before its final ACK reaches the proxy), its record is copied from the
 * socket-cookie key to the client's (local ip, local port) key, which is what the proxy sees as
 * the peer address of the accepted connection. ACTIVE_ESTABLISHED_CB is always delivered; no
 * bpf_sock_ops_cb_flags_set() is needed. An AF_INET6 socket's record (connect6) goes to the IPv6
 * tuple map under its local IPv6 address (::ffff:a.b.c.d when it connected to a v4-mapped proxy). */
#include "clusterlink.h"

int cl_sockops(struct bpf_sock_ops *skops)
{
    if (skops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
        return CL_PROCEED;
    __u32 family = skops->family;
    __u64 cookie = bpf_get_socket_cookie(skops);

    if (family == 2 /* AF_INET */) {
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
    if (family == 10 /* AF_INET6 */) {
        struct cl_orig6 *orig6 = cl_cookie_orig6.lookup(&cookie);
        if (!orig6)
            return CL_PROCEED;
        struct cl_addr6 client6 = {};
        /* one 4-byte load per word (volatile): the verifier refuses the 8-byte loads the compiler
         * would merge them into */
        client6.ip[0] = *(volatile __u32 *)&skops->local_ip6[0];
        client6.ip[1] = *(volatile __u32 *)&skops->local_ip6[1];
        client6.ip[2] = *(volatile __u32 *)&skops->local_ip6[2];
        client6.ip[3] = *(volatile __u32 *)&skops->local_ip6[3];
        client6.port = cl_htons(skops->local_port);
        client6.proto = IPPROTO_TCP;
        client6.pad = 0;
        struct cl_orig6 copy6 = *orig6;
        cl_tuple_orig6.update(&client6, &copy6);
    }
    return CL_PROCEED;
}
