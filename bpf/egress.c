/* egress.c: cgroup_skb/egress. A UDP datagram leaving a socket of the cgroup for one of the agent's
 * relays (the destination connect4/sendmsg4 wrote) records its sender, (source ip, source port,
 * UDP) -> {VIP, port, cgroup id of the socket}, in cl_tuple_orig: the relay reads it on a flow's
 * first datagram to learn who the client is. The record is written only when missing or changed,
 * so a flow's later datagrams cost two lookups. Every packet is let through (1). */
#include "clusterlink.h"



int cl_egress(struct __sk_buff *skb)
{
    if (skb->protocol != cl_htons(0x0800))
        return CL_PROCEED;
    __u8 vihl = 0;
    __u8 protocol = 0;
    if (bpf_skb_load_bytes(skb, 0, &vihl, 1) != 0)
        return CL_PROCEED;
    if (bpf_skb_load_bytes(skb, 9, &protocol, 1) != 0 || protocol != IPPROTO_UDP)
        return CL_PROCEED;
    __u32 header = ((__u32)vihl & 0x0f) * 4;
    if (header < 20)
        return CL_PROCEED;
    __u32 saddr = 0;
    __u32 daddr = 0;
    struct cl_udp_ports ports = {};
    if (bpf_skb_load_bytes(skb, 12, &saddr, 4) != 0 || bpf_skb_load_bytes(skb, 16, &daddr, 4) != 0)
        return CL_PROCEED;
    if (bpf_skb_load_bytes(skb, header & 0x3c, &ports, sizeof(ports)) != 0)
        return CL_PROCEED;

    struct cl_addr relay = {};
    relay.ip = daddr;
    relay.port = ports.dest;
    relay.proto = IPPROTO_UDP;
    relay.pad = 0;
    struct cl_addr *vip = cl_udp_relays.lookup(&relay);
    if (!vip)
        return CL_PROCEED;

    struct cl_addr sender = {};
    sender.ip = saddr;
    sender.port = ports.source;
    sender.proto = IPPROTO_UDP;
    sender.pad = 0;
    struct cl_orig orig = {};
    orig.ip = vip->ip;
    orig.port = vip->port;
    orig.proto = IPPROTO_UDP;
    orig.pad = 0;
    orig.cgroup_id = bpf_skb_cgroup_id(skb);
    struct cl_orig *known = cl_tuple_orig.lookup(&sender);
    if (known && known->ip == orig.ip && known->port == orig.port && known->cgroup_id == orig.cgroup_id)
        return CL_PROCEED;
    cl_tuple_orig.update(&sender, &orig);
    return CL_PROCEED;
}
