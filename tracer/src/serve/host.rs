//! Every request must be addressed to an address, not to a DNS name. A browser page a DNS
//! name re-pointed at this machine (DNS rebinding) sends that name as `Host` and is refused;
//! an IP address or `localhost` cannot be re-pointed, and is what a client that came here on
//! purpose sends (through a tunnel or port mapping too, whatever its port). A POST from
//! another site's page (its `Origin`) is refused as well: the endpoints show the target's
//! stacks, and a scan stops it.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::{
    extract::{ConnectInfo, Request, connect_info::Connected},
    http::{Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    serve::IncomingStream,
};

/// The local address a connection reached (for a server bound to 0.0.0.0, the address of
/// this machine the client connected to).
#[derive(Clone, Copy, Debug)]
pub struct Reached(pub Option<SocketAddr>);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Reached {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self(stream.io().local_addr().ok())
    }
}

/// True when `host` (a `Host` header: `NAME[:PORT]`) names an IP address or `localhost`.
/// The port is not compared: a tunnel (`ssh -L 8080:127.0.0.1:9464`) or a container's port
/// mapping changes it, and a rebinding page chooses it anyway.
pub fn names_an_address(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((v6, rest)) if rest.is_empty() || is_port(rest) => {
                return v6.parse::<Ipv6Addr>().is_ok();
            }
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.parse::<Ipv4Addr>().is_ok() || name.eq_ignore_ascii_case("localhost")
}

/// `:DIGITS`.
fn is_port(text: &str) -> bool {
    text.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

/// Refuses, with 403 and why, a request whose `Host` (or absolute URI) is a DNS name, and a
/// POST whose `Origin` is another site.
pub async fn check(
    ConnectInfo(Reached(reached)): ConnectInfo<Reached>,
    request: Request,
    next: Next,
) -> Response {
    let Some(reached) = reached else {
        return refuse("cannot tell which address this connection reached".into());
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    let Some(host) = host else {
        return refuse(format!(
            "the request names no host; ask for http://{reached}/ (this server answers only requests addressed to it)"
        ));
    };
    let authority_ok = request
        .uri()
        .authority()
        .is_none_or(|a| names_an_address(a.as_str()));
    if !names_an_address(&host) || !authority_ok {
        return refuse(format!(
            "Host `{}` is not an IP address or localhost; ask for http://{reached}/ (requests addressed to a DNS name are refused, against DNS rebinding)",
            host.escape_debug()
        ));
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD)
        && let Some(origin) = request.headers().get(header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or("");
        let same_site = origin
            .strip_prefix("http://")
            .is_some_and(|o| o.eq_ignore_ascii_case(&host));
        if !same_site {
            return refuse(format!(
                "{} from a page of `{}`, another site: only this server's own pages (and clients that send no Origin, such as curl) may",
                request.method(),
                origin.escape_debug()
            ));
        }
    }
    next.run(request).await
}

fn refuse(why: String) -> Response {
    (
        StatusCode::FORBIDDEN,
        format!("leaktracer: refused: {why}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_and_localhost_are_served_names_are_not() {
        for host in [
            "127.0.0.1:9464",
            "127.0.0.1",
            "10.1.2.3:8080",
            "localhost:9464",
            "LocalHost",
            "[::1]:9000",
            "[::1]",
            "[::ffff:10.1.2.3]:9000",
        ] {
            assert!(names_an_address(host), "{host}");
        }
        for host in [
            "evil.example.com",
            "evil.example.com:9464",
            "localhost.evil.example.com:9464",
            "127.0.0.1.nip.io:9464",
            "2130706433:9464",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "127.0.0.1:80:80",
            "[::1",
            "[::1]x",
            "[evil.example.com]:80",
            "",
            ":9464",
        ] {
            assert!(!names_an_address(host), "{host}");
        }
    }
}
