//! Listening sockets, opened by the control thread and handed to the cores.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;

use portcullis_api::config::Transport;
use socket2::{Domain, Protocol, Socket, Type};

/// Accept backlog per socket; each core has its own socket per port.
const BACKLOG: i32 = 4096;

/// Unsent bytes a client connection may queue in the kernel before a write waits
/// (TCP_NOTSENT_LOWAT, inherited by accepted sockets). Without it the kernel takes megabytes per
/// connection: a thousand slow readers cost gigabytes of socket memory and stalled the core
/// while it copied them, and the minimum rate saw them late. Bytes in flight are not limited,
/// so a fast client's throughput is not either.
pub const CLIENT_NOTSENT_LOWAT: u32 = 128 * 1024;

/// A listening socket for `port` that other sockets of this process can share
/// (SO_REUSEPORT): the kernel spreads connections over the cores' sockets.
pub fn reuse_port_listener(address: IpAddr, port: u16) -> std::io::Result<OwnedFd> {
    let socket = new_socket(SocketAddr::new(address, port))?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_notsent_lowat(CLIENT_NOTSENT_LOWAT)?;
    bind_and_listen(socket, SocketAddr::new(address, port))
}

/// A socket of `transport` for `port` that each core can have its own of.
pub fn reuse_port_socket(
    transport: Transport,
    address: IpAddr,
    port: u16,
) -> std::io::Result<OwnedFd> {
    match transport {
        Transport::Tcp => reuse_port_listener(address, port),
        Transport::Udp => reuse_port_udp_socket(address, port),
    }
}

/// A UDP socket bound to `port` that other sockets of this process can share (SO_REUSEPORT):
/// the kernel picks a core's socket by the datagram's addresses and ports, so every datagram
/// of one client address and port reaches the same core while the set of sockets is unchanged.
pub fn reuse_port_udp_socket(address: IpAddr, port: u16) -> std::io::Result<OwnedFd> {
    let address = SocketAddr::new(address, port);
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    // SO_REUSEPORT only: on UDP, SO_REUSEADDR would also let any local socket that sets it
    // bind the port, without the same-user check SO_REUSEPORT makes.
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// A listening socket nobody else can share (the admin endpoint: a second proxy on the same
/// address must fail to start rather than split the scrapes).
pub fn exclusive_listener(address: SocketAddr) -> std::io::Result<OwnedFd> {
    let socket = new_socket(address)?;
    bind_and_listen(socket, address)
}

fn new_socket(address: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(socket)
}

fn bind_and_listen(socket: Socket, address: SocketAddr) -> std::io::Result<OwnedFd> {
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_client_sockets_inherit_the_unsent_bytes_limit() {
        let listener = Socket::from(reuse_port_listener(IpAddr::from([127, 0, 0, 1]), 0).unwrap());
        listener.set_nonblocking(false).unwrap();
        let address = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(address.as_socket().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(accepted.tcp_notsent_lowat().unwrap(), CLIENT_NOTSENT_LOWAT);
    }

    #[test]
    fn udp_sockets_share_a_port_with_each_other_and_with_tcp() {
        let localhost = IpAddr::from([127, 0, 0, 1]);
        // The TCP port first: other tests take TCP ports all the time, UDP ones seldom.
        let tcp = Socket::from(reuse_port_listener(localhost, 0).unwrap());
        let port = tcp.local_addr().unwrap().as_socket().unwrap().port();
        let first = Socket::from(reuse_port_udp_socket(localhost, port).unwrap());
        assert_eq!(first.r#type().unwrap(), Type::DGRAM);
        assert!(reuse_port_udp_socket(localhost, port).is_ok());
    }

    #[test]
    fn reuse_port_sockets_share_and_exclusive_ones_do_not() {
        let localhost = IpAddr::from([127, 0, 0, 1]);
        let first = reuse_port_listener(localhost, 0).unwrap();
        let port = Socket::from(first)
            .local_addr()
            .unwrap()
            .as_socket()
            .unwrap()
            .port();
        let a = reuse_port_listener(localhost, port);
        let b = reuse_port_listener(localhost, port);
        assert!(a.is_ok() && b.is_ok());
        assert!(exclusive_listener(SocketAddr::new(localhost, port)).is_err());
    }
}
