/* sock_release.c: cgroup/sock_release (INET_SOCK_RELEASE). When a socket is closed its cookie
 * record is deleted, so finished connections do not churn the LRU. Tuple records are NOT deleted
 * here: a TCP client may close right after connect+send, before the proxy accepted and looked it
 * up; and this hook cannot read a socket's source address (only post_bind hooks may). A UDP
 * sender record goes when the agent's flow ends (Datapath.forget_udp_sender); LRU is the backstop. */
#include "clusterlink.h"

int cl_sock_release(struct bpf_sock *sk)
{
    __u32 protocol = sk->protocol;
    if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
        return CL_PROCEED;
    __u64 cookie = bpf_get_socket_cookie(sk);
    cl_cookie_orig.delete(&cookie);
    cl_cookie_orig6.delete(&cookie);
    return CL_PROCEED;
}
