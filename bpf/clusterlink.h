/* clusterlink.h: the one definition of every struct and map shared by the agent's BPF programs.
 *
 * Compiled with BCC: agent/datapath/loader.py concatenates this header and the program files
 * (connect4.c, connect6.c, sendmsg4.c, recvmsg4.c, egress.c, sockops.c, getpeername4.c,
 * getpeername6.c, sock_release.c) into one translation unit, so each map
 * below is defined exactly once. Python mirrors these structs in agent/datapath/layout.py and
 * checks them against the compiled layout at start-up: change both together.
 *
 * Byte order, stated once for every field below:
 *   ip    IPv4 address in NETWORK byte order (the four bytes as on the wire; what
 *         bpf_sock_addr.user_ip4 and bpf_sock_ops.local_ip4 hold); in the *6 structs, the IPv6
 *         address as four words in network byte order (user_ip6, local_ip6); an IPv4 client of
 *         the proxy appears there as ::ffff:a.b.c.d.
 *   port  TCP port in NETWORK byte order, as a 16-bit value (bpf_sock_addr.user_port holds it in the
 *         low 16 bits of a __u32; bpf_sock_ops.local_port is in HOST order and is converted with
 *         cl_htons before it is stored).
 *   proto IPPROTO_TCP (6) or IPPROTO_UDP (17): the same VIP:port may be imported for each.
 *   pad   always zero: map keys are compared bytewise, so no byte may be left undefined.
 */
#ifndef CLUSTERLINK_H
#define CLUSTERLINK_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>

#ifndef CL_SERVICES_MAX
#define CL_SERVICES_MAX 16384      /* imported (VIP, port) pairs per node */
#endif
#ifndef CL_CONNECTIONS_MAX
#define CL_CONNECTIONS_MAX 65536   /* redirected connections tracked at once (LRU) */
#endif

/* cgroup programs: 1 lets the operation proceed (we never deny, we only rewrite). */
#define CL_PROCEED 1

/* A UDP datagram's first bytes, as the egress program reads them (IPv4 header without options,
 * then the UDP header's ports; options are handled by reading the ports at ihl * 4). */
struct cl_udp_ports {
    __u16 source;  /* network byte order */
    __u16 dest;    /* network byte order */
};

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define cl_htons(x) ((__u16)__builtin_bswap16((__u16)(x)))
#else
#define cl_htons(x) ((__u16)(x))
#endif

/* An IPv4 endpoint of one protocol: a VIP:port (services key), a proxy ip:port (services value),
 * a UDP relay's ip:port (relays key), or a redirected client's local ip:port (tuple key). 8 bytes. */
struct cl_addr {
    __u32 ip;    /* network byte order */
    __u16 port;  /* network byte order */
    __u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
    __u8 pad;    /* zero */
};

/* What a redirected connection originally asked for, and who asked. 16 bytes. */
struct cl_orig {
    __u32 ip;          /* original destination (the VIP), network byte order */
    __u16 port;        /* original destination port, network byte order */
    __u8 proto;        /* IPPROTO_TCP or IPPROTO_UDP */
    __u8 pad;          /* zero */
    __u64 cgroup_id;   /* cgroup v2 id (= inode of its directory) of the connecting task */
};

/* The IPv6 counterparts: a VIP6:port (services6 key), a proxy address (services6 value: the proxy's
 * IPv6 address, or ::ffff:<its IPv4 address> for a dual-stack client), a client's local address
 * as the proxy sees it (tuple6 key). 20 bytes. */
struct cl_addr6 {
    __u32 ip[4];  /* network byte order */
    __u16 port;   /* network byte order */
    __u8 proto;   /* IPPROTO_TCP */
    __u8 pad;     /* zero */
};

/* What a redirected IPv6 connection asked for, and who asked. 32 bytes. */
struct cl_orig6 {
    __u32 ip[4];       /* the VIP6 */
    __u16 port;        /* network byte order */
    __u8 proto;        /* IPPROTO_TCP */
    __u8 pad;          /* zero */
    __u32 pad2;        /* zero (explicit: no implicit padding in a map value) */
    __u64 cgroup_id;
};

_Static_assert(sizeof(struct cl_addr) == 8, "struct cl_addr must be 8 bytes");
_Static_assert(sizeof(struct cl_addr6) == 20, "struct cl_addr6 must be 20 bytes");
_Static_assert(sizeof(struct cl_orig6) == 32, "struct cl_orig6 must be 32 bytes");
_Static_assert(sizeof(struct cl_orig) == 16, "struct cl_orig must be 16 bytes");

/* (VIP, port, proto) -> (proxy ip, proxy port, proto). Written by the agent (Datapath.reconcile),
 * read by connect4 and sendmsg4. A UDP service's value is its own relay socket on the agent. */
BPF_HASH(cl_services, struct cl_addr, struct cl_addr, CL_SERVICES_MAX);

/* (relay ip, relay port, UDP) -> (VIP, port, UDP): the reverse of the UDP entries of cl_services.
 * Written by the agent with them; read by recvmsg4 (a reply appears to come from the VIP) and by
 * egress (a datagram to a relay records its sender's cgroup). */
BPF_HASH(cl_udp_relays, struct cl_addr, struct cl_addr, CL_SERVICES_MAX);

/* socket cookie -> original destination. Written by connect4; read by sockops and getpeername4;
 * deleted by sock_release when the socket is closed (LRU eviction is the backstop). */
BPF_TABLE("lru_hash", __u64, struct cl_orig, cl_cookie_orig, CL_CONNECTIONS_MAX);

/* client's (local ip, local port, proto) -> original destination. TCP: written by sockops when the
 * redirected connection is established (before the client's final ACK, so before the proxy can
 * accept it); read and deleted by the proxy (Datapath.lookup). UDP: written by egress for a datagram
 * to a relay (only when missing or changed), read by the agent's relay on a flow's first datagram
 * (Datapath.udp_sender), deleted by the agent when the flow ends (forget_udp_sender). */
BPF_TABLE("lru_hash", struct cl_addr, struct cl_orig, cl_tuple_orig, CL_CONNECTIONS_MAX);

/* IPv6: (VIP6, port, proto) -> proxy address (TCP) or the service's UDP relay (UDP: on the
 * proxy's IPv6 address, or v4-mapped, which only connected sockets can use: the kernel refuses a
 * sendmsg6 rewritten to a v4-mapped address); written by the agent, read by connect6, sendmsg6. */
BPF_HASH(cl_services6, struct cl_addr6, struct cl_addr6, CL_SERVICES_MAX);

/* (relay address, IPv6 or ::ffff:IPv4, relay port, UDP) -> (VIP6, port, UDP): the reverse of the
 * UDP entries of cl_services6; read by recvmsg6 (answers come from the VIP6) and egress. */
BPF_HASH(cl_udp_relays6, struct cl_addr6, struct cl_addr6, CL_SERVICES_MAX);

/* socket cookie -> original IPv6 destination; written by connect6, read by sockops and
 * getpeername6, deleted by sock_release. */
BPF_TABLE("lru_hash", __u64, struct cl_orig6, cl_cookie_orig6, CL_CONNECTIONS_MAX);

/* client's local address (IPv6, or ::ffff:IPv4 for a v4-mapped socket), port, proto -> original
 * IPv6 destination. TCP: written by sockops, read and deleted by the proxy (Datapath.lookup). UDP:
 * written by egress for an IPv6 datagram to a relay on the proxy's IPv6 address, read by
 * Datapath.udp_sender, deleted when the agent's flow ends. */
BPF_TABLE("lru_hash", struct cl_addr6, struct cl_orig6, cl_tuple_orig6, CL_CONNECTIONS_MAX);

#endif /* CLUSTERLINK_H */
