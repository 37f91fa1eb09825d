//! UPnP IGD (Internet Gateway Device) port mapping, the messages only: the SSDP search,
//! finding the WAN connection service in the device description, and the SOAP calls. The
//! daemon does the HTTP; this keeps the parsing testable and free of I/O.
//!
//! Every parser takes text from the local network (the gateway, or anything answering on
//! it) and is bounded and forgiving: it returns `None` rather than failing loudly, and never
//! panics.

use std::net::{Ipv4Addr, SocketAddrV4};

/// The SSDP port on the gateway (searches go to the gateway itself, unicast).
pub const SSDP_PORT: u16 = 1900;
/// The WAN connection services that carry `AddPortMapping`, best first.
pub const SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];
/// Longest description or SOAP answer read.
pub const MAX_BODY: usize = 64 * 1024;

/// An SSDP M-SEARCH for an Internet Gateway Device.
pub fn msearch() -> Vec<u8> {
    b"M-SEARCH * HTTP/1.1\r\n\
HOST: 239.255.255.250:1900\r\n\
MAN: \"ssdp:discover\"\r\n\
MX: 1\r\n\
ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n"
        .to_vec()
}

/// The `LOCATION` of an SSDP answer: where the device description is, if it is an
/// `http://` URL on `gateway` (a description elsewhere is not the gateway's).
pub fn location(answer: &[u8], gateway: Ipv4Addr) -> Option<String> {
    let text = std::str::from_utf8(answer).ok()?;
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        return None;
    }
    let url = text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("location")
            .then(|| value.trim().to_owned())
    })?;
    let host = url.strip_prefix("http://")?.split(['/', ':']).next()?;
    (host.parse::<Ipv4Addr>().ok()? == gateway).then_some(url)
}

/// The WAN connection service of a device description and its control URL, made absolute
/// against the description's own URL.
pub fn control_url(description: &str, description_url: &str) -> Option<(&'static str, String)> {
    for service in SERVICES {
        for block in description.split("<service>").skip(1) {
            let block = block.split("</service>").next()?;
            if element(block, "serviceType") != Some(service) {
                continue;
            }
            let path = element(block, "controlURL")?;
            return Some((service, absolute(path, description_url)?));
        }
    }
    None
}

/// `path` resolved against `base` (both `http://host:port/...`).
fn absolute(path: &str, base: &str) -> Option<String> {
    if path.starts_with("http://") {
        return Some(path.to_owned());
    }
    let rest = base.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let sep = if path.starts_with('/') { "" } else { "/" };
    Some(format!("http://{authority}{sep}{path}"))
}

/// The text of the first `<name>…</name>` in `xml`, trimmed (namespace prefixes allowed).
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = xml.find(&format!("{name}>"))?;
    let start = open + name.len() + 1;
    let end = xml[start..].find("</")? + start;
    Some(xml[start..end].trim())
}

/// A SOAP call: the `SOAPAction` header and the body.
pub fn soap(service: &str, action: &str, args: &[(&str, String)]) -> (String, String) {
    let mut inner = String::new();
    for (k, v) in args {
        inner.push_str(&format!("<{k}>{v}</{k}>"));
    }
    let body = format!(
        "<?xml version=\"1.0\"?>\r\n\
<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" \
s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\">\
<s:Body><u:{action} xmlns:u=\"{service}\">{inner}</u:{action}></s:Body></s:Envelope>\r\n"
    );
    (format!("\"{service}#{action}\""), body)
}

/// `AddPortMapping` for UDP `port` of `client`, the same port outside, for `lease` seconds.
pub fn add_port_mapping(
    service: &str,
    client: Ipv4Addr,
    port: u16,
    lease: u32,
) -> (String, String) {
    soap(
        service,
        "AddPortMapping",
        &[
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", port.to_string()),
            ("NewProtocol", "UDP".into()),
            ("NewInternalPort", port.to_string()),
            ("NewInternalClient", client.to_string()),
            ("NewEnabled", "1".into()),
            ("NewPortMappingDescription", "LANrage".into()),
            ("NewLeaseDuration", lease.to_string()),
        ],
    )
}

pub fn delete_port_mapping(service: &str, port: u16) -> (String, String) {
    soap(
        service,
        "DeletePortMapping",
        &[
            ("NewRemoteHost", String::new()),
            ("NewExternalPort", port.to_string()),
            ("NewProtocol", "UDP".into()),
        ],
    )
}

pub fn get_external_ip(service: &str) -> (String, String) {
    soap(service, "GetExternalIPAddress", &[])
}

/// The address in a `GetExternalIPAddress` answer, with `port`: the mapped address.
pub fn external_addr(answer: &str, port: u16) -> Option<SocketAddrV4> {
    let ip: Ipv4Addr = element(answer, "NewExternalIPAddress")?.parse().ok()?;
    (!ip.is_unspecified()).then(|| SocketAddrV4::new(ip, port))
}

/// The UPnP error code of a SOAP fault (e.g. 718: the port is mapped to someone else).
pub fn fault(answer: &str) -> Option<u16> {
    element(answer, "errorCode")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 2, 1);

    #[test]
    fn ssdp_answers_give_the_gateways_description_only() {
        let ok = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLocation: http://192.168.2.1:5000/rootDesc.xml\r\n\r\n";
        assert_eq!(
            location(ok, GW).as_deref(),
            Some("http://192.168.2.1:5000/rootDesc.xml")
        );
        let elsewhere = b"HTTP/1.1 200 OK\r\nLOCATION: http://10.9.9.9:5000/d.xml\r\n\r\n";
        assert_eq!(location(elsewhere, GW), None);
        for junk in [
            &b""[..],
            b"NOTIFY * HTTP/1.1\r\n\r\n",
            &[0xff; 40],
            b"HTTP/1.1 200 OK\r\n",
        ] {
            assert_eq!(location(junk, GW), None);
        }
    }

    #[test]
    fn the_wan_service_and_its_control_url_are_found() {
        let desc = "<root><device><serviceList>\
<service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>\
<controlURL>/ctl/L3F</controlURL></service>\
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>\
<controlURL>/ctl/IPConn</controlURL></service>\
</serviceList></device></root>";
        assert_eq!(
            control_url(desc, "http://192.168.2.1:5000/rootDesc.xml"),
            Some((SERVICES[1], "http://192.168.2.1:5000/ctl/IPConn".to_owned()))
        );
        assert_eq!(control_url("<root/>", "http://192.168.2.1:5000/"), None);
        assert_eq!(control_url("<service><serviceType>", "http://x/"), None);
    }

    #[test]
    fn soap_answers_are_read() {
        let (action, body) =
            add_port_mapping(SERVICES[1], Ipv4Addr::new(192, 168, 2, 2), 51820, 3600);
        assert_eq!(action, format!("\"{}#AddPortMapping\"", SERVICES[1]));
        assert!(body.contains("<NewInternalClient>192.168.2.2</NewInternalClient>"));
        assert!(body.contains("<NewLeaseDuration>3600</NewLeaseDuration>"));
        let answer = "<s:Envelope><s:Body><u:GetExternalIPAddressResponse>\
<NewExternalIPAddress>100.128.66.2</NewExternalIPAddress>\
</u:GetExternalIPAddressResponse></s:Body></s:Envelope>";
        assert_eq!(
            external_addr(answer, 51820),
            Some("100.128.66.2:51820".parse().expect("addr"))
        );
        let fault_body = "<s:Fault><detail><UPnPError><errorCode>718</errorCode>\
<errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault>";
        assert_eq!(fault(fault_body), Some(718));
        assert_eq!(external_addr(fault_body, 1), None);
    }
}
