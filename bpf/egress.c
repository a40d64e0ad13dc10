/* egress.c: cgroup_skb/egress. A UDP datagram leaving a socket of the cgroup for one of the agent's
 * relays (the destination connect4/sendmsg4/connect6/sendmsg6 wrote) records its sender, (source
 * ip, source port, UDP) -> {VIP, port, cgroup id of the socket}, in cl_tuple_orig (IPv4 datagrams,
 * v4-mapped ones included) or cl_tuple_orig6 (IPv6 datagrams, to a relay on the proxy's IPv6
 * address): the relay reads it on a flow's first datagram to learn who the client is. The record
 * is written only when missing or changed, so a flow's later datagrams cost two lookups. IPv6
 * extension headers are not followed (such a datagram is not recorded: its flow is dropped). Every
 * packet is let through (1). */
#include "clusterlink.h"

/* the third word of ::ffff:a.b.c.d, as stored (network byte order) */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define cl_htonl_ffff 0xffff0000u
#else
#define cl_htonl_ffff 0x0000ffffu
#endif



static __always_inline int cl_egress6(struct __sk_buff *skb)
{
    __u8 next = 0;
    if (bpf_skb_load_bytes(skb, 6, &next, 1) != 0 || next != IPPROTO_UDP)
        return CL_PROCEED;
    struct cl_addr6 relay = {};
    struct cl_addr6 sender = {};
    struct cl_udp_ports ports = {};
    if (bpf_skb_load_bytes(skb, 8, &sender.ip, 16) != 0 || bpf_skb_load_bytes(skb, 24, &relay.ip, 16) != 0 ||
        bpf_skb_load_bytes(skb, 40, &ports, sizeof(ports)) != 0)
        return CL_PROCEED;
    relay.port = ports.dest;
    relay.proto = IPPROTO_UDP;
    struct cl_addr6 *vip = cl_udp_relays6.lookup(&relay);
    if (!vip)
        return CL_PROCEED;
    sender.port = ports.source;
    sender.proto = IPPROTO_UDP;
    struct cl_orig6 orig = {};
    orig.ip[0] = vip->ip[0];
    orig.ip[1] = vip->ip[1];
    orig.ip[2] = vip->ip[2];
    orig.ip[3] = vip->ip[3];
    orig.port = vip->port;
    orig.proto = IPPROTO_UDP;
    orig.cgroup_id = bpf_skb_cgroup_id(skb);
    struct cl_orig6 *known = cl_tuple_orig6.lookup(&sender);
    if (known && known->port == orig.port && known->cgroup_id == orig.cgroup_id && known->ip[0] == orig.ip[0] &&
        known->ip[1] == orig.ip[1] && known->ip[2] == orig.ip[2] && known->ip[3] == orig.ip[3])
        return CL_PROCEED;
    cl_tuple_orig6.update(&sender, &orig);
    return CL_PROCEED;
}

int cl_egress(struct __sk_buff *skb)
{
    if (skb->protocol == cl_htons(0x86DD))
        return cl_egress6(skb);
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
    __u32 vip_ip = 0;
    __u16 vip_port = 0;
    struct cl_addr *vip = cl_udp_relays.lookup(&relay);
    if (vip) {
        vip_ip = vip->ip;
        vip_port = vip->port;
    } else {
        /* the relay of an IPv6 VIP, reached v4-mapped by an AF_INET6 socket */
        struct cl_addr6 relay6 = {};
        relay6.ip[2] = cl_htonl_ffff;
        relay6.ip[3] = daddr;
        relay6.port = ports.dest;
        relay6.proto = IPPROTO_UDP;
        struct cl_addr6 *vip6 = cl_udp_relays6.lookup(&relay6);
        if (!vip6)
            return CL_PROCEED;
        vip_port = vip6->port;  /* the record's address stays 0.0.0.0: the relay knows its VIP6 */
    }

    struct cl_addr sender = {};
    sender.ip = saddr;
    sender.port = ports.source;
    sender.proto = IPPROTO_UDP;
    sender.pad = 0;
    struct cl_orig orig = {};
    orig.ip = vip_ip;
    orig.port = vip_port;
    orig.proto = IPPROTO_UDP;
    orig.pad = 0;
    orig.cgroup_id = bpf_skb_cgroup_id(skb);
    struct cl_orig *known = cl_tuple_orig.lookup(&sender);
    if (known && known->ip == orig.ip && known->port == orig.port && known->cgroup_id == orig.cgroup_id)
        return CL_PROCEED;
    cl_tuple_orig.update(&sender, &orig);
    return CL_PROCEED;
}
