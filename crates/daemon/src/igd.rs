//! UPnP IGD port mapping (the HTTP side of `lanrage_core::portmap::igd`): tried when the
//! gateway answers neither PCP nor NAT-PMP. One task finds the gateway's WAN connection
//! service, maps the daemon's UDP port, renews the lease, and deletes the mapping when told
//! to stop.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lanrage_core::portmap::igd;
use lanrage_core::portmap::{Mapping, Protocol};
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};

/// Lease asked for; renewed at half.
const LEASE: Duration = Duration::from_secs(3600);
/// A gateway without IGD is asked again this much later.
const RETRY: Duration = Duration::from_secs(300);
/// Each HTTP call and the SSDP search give up after this.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The running task: its mapping, and a way to stop it that deletes the mapping first.
pub struct IgdMapper {
    pub mapping: watch::Receiver<Option<Mapping>>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IgdMapper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IgdMapper {
    pub fn start(gateway: Ipv4Addr, client: Ipv4Addr, port: u16) -> Self {
        let (tx, mapping) = watch::channel(None);
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(gateway, client, port, tx, stop_rx));
        Self {
            mapping,
            stop: Some(stop),
            task,
        }
    }

    /// Deletes the mapping (waiting a moment for the gateway) and ends the task.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.task).await;
    }
}

async fn run(
    gateway: Ipv4Addr,
    client: Ipv4Addr,
    port: u16,
    tx: watch::Sender<Option<Mapping>>,
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(http) = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .no_proxy()
        .build()
    else {
        return;
    };
    let mut service = None;
    loop {
        let wait = match map(&http, gateway, client, port, &mut service).await {
            Ok(external) => {
                let before = *tx.borrow();
                if before.map(|m| m.external) != Some(external) {
                    tracing::info!(protocol = "upnp-igd", %external, "the router forwards a port to us");
                }
                tx.send_replace(Some(Mapping {
                    protocol: Protocol::UpnpIgd,
                    external,
                    expires: Instant::now() + LEASE,
                }));
                LEASE / 2
            }
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "no UPnP IGD port mapping");
                service = None;
                RETRY
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = &mut stop => break,
        }
    }
    let mapped = tx.borrow().is_some();
    if let Some((kind, control)) = &service
        && mapped
    {
        let _ = call(&http, control, igd::delete_port_mapping(kind, port)).await;
        tracing::debug!("UPnP IGD mapping deleted");
    }
    tx.send_replace(None);
}

/// Finds the service (once) and maps the port; returns the external address.
async fn map(
    http: &reqwest::Client,
    gateway: Ipv4Addr,
    client: Ipv4Addr,
    port: u16,
    service: &mut Option<(&'static str, String)>,
) -> anyhow::Result<SocketAddrV4> {
    if service.is_none() {
        *service = Some(discover(http, gateway).await?);
    }
    let Some((kind, control)) = service.as_ref() else {
        anyhow::bail!("no WAN connection service");
    };
    let lease = u32::try_from(LEASE.as_secs()).unwrap_or(u32::MAX);
    call(
        http,
        control,
        igd::add_port_mapping(kind, client, port, lease),
    )
    .await?;
    let answer = call(http, control, igd::get_external_ip(kind)).await?;
    igd::external_addr(&answer, port).context("the gateway did not say its external address")
}

/// SSDP search (unicast to the gateway, three tries), then its device description.
async fn discover(
    http: &reqwest::Client,
    gateway: Ipv4Addr,
) -> anyhow::Result<(&'static str, String)> {
    let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
    let target = SocketAddr::from((gateway, igd::SSDP_PORT));
    let mut buf = vec![0u8; 2048];
    let mut found = None;
    'tries: for _ in 0..3 {
        socket.send_to(&igd::msearch(), target).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Ok((n, _))) =
            tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            if let Some(url) = igd::location(&buf[..n], gateway) {
                found = Some(url);
                break 'tries;
            }
        }
    }
    let url = found.context("no UPnP answer from the gateway")?;
    let description = bounded_text(http.get(&url).send().await?).await?;
    igd::control_url(&description, &url).context("no WAN connection service in the description")
}

async fn call(
    http: &reqwest::Client,
    control: &str,
    (action, body): (String, String),
) -> anyhow::Result<String> {
    let response = http
        .post(control)
        .header("SOAPAction", action)
        .header("Content-Type", "text/xml; charset=\"utf-8\"")
        .body(body)
        .send()
        .await?;
    let ok = response.status().is_success();
    let text = bounded_text(response).await?;
    if !ok {
        match igd::fault(&text) {
            Some(code) => anyhow::bail!("the gateway refused (UPnP error {code})"),
            None => anyhow::bail!("the gateway refused"),
        }
    }
    Ok(text)
}

async fn bounded_text(response: reqwest::Response) -> anyhow::Result<String> {
    if response
        .content_length()
        .is_some_and(|l| l > igd::MAX_BODY as u64)
    {
        anyhow::bail!("answer too large");
    }
    let bytes = response.bytes().await?;
    anyhow::ensure!(bytes.len() <= igd::MAX_BODY, "answer too large");
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
