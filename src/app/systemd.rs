//! systemd's notify protocol (`Type=notify`): READY once the listeners
//! accept, RELOADING/READY around a reload, STOPPING, and the watchdog.
//! Without `NOTIFY_SOCKET` every call does nothing.

use std::time::{Duration, Instant};

/// Tells systemd (when `NOTIFY_SOCKET` is set; else nothing happens).
pub fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        log::warn!("systemd notify ({state:?}): {e}");
    }
}

/// Says `READY=1` once the proxy and admin listeners accept connections
/// (they start beside the control service), then pets the watchdog when
/// systemd set one. Runs on the control service's runtime.
pub async fn announce_ready(listeners: [std::net::SocketAddr; 2]) {
    let reachable = |mut a: std::net::SocketAddr| {
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        a
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for addr in listeners.map(reachable) {
        while tokio::net::TcpStream::connect(addr).await.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    if let Some(every) = sd_notify::watchdog_enabled() {
        let mut tick = tokio::time::interval(every / 2);
        loop {
            tick.tick().await;
            notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }
}
