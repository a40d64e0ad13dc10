/* sock_release.c: cgroup/sock_release (INET_SOCK_RELEASE). When a socket is closed its cookie
 * record is deleted, so finished connections do not churn the LRU. The tuple record is NOT deleted
 * here: a client may close right after connect+send, before the proxy accepted and looked it up. */
#include "clusterlink.h"

int cl_sock_release(struct bpf_sock *sk)
{
    if (sk->protocol != IPPROTO_TCP)
        return CL_PROCEED;
    __u64 cookie = bpf_get_socket_cookie(sk);
    cl_cookie_orig.delete(&cookie);
    return CL_PROCEED;
}
