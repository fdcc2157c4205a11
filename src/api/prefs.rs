//! The rest of qBittorrent's `app/preferences`: the fields dropseed has no
//! setting for, with the value that says what dropseed does (UPnP,
//! schedulers, mail, RSS, proxies: off; web UI protections: on) or
//! qBittorrent's default where the setting only tunes libtorrent. Tools
//! read the whole object into typed structures, so every field is there
//! with its type (tests/qbt_diff.rs compares with qbittorrent-nox); the
//! ones dropseed honours are in `app::preferences_of`, which overrides
//! these.

use super::auth;
use crate::config::Config;
use serde_json::{Map, Value};

/// Fields dropseed has no setting for, and what it answers for them.
const FIXED: &str = r#"{
    "add_trackers": "",
    "add_trackers_enabled": false,
    "alt_dl_limit": 0,
    "alt_up_limit": 0,
    "alternative_webui_enabled": false,
    "alternative_webui_path": "",
    "announce_ip": "",
    "announce_to_all_tiers": true,
    "announce_to_all_trackers": false,
    "anonymous_mode": false,
    "async_io_threads": 10,
    "auto_delete_mode": 0,
    "autorun_enabled": false,
    "autorun_on_torrent_added_enabled": false,
    "autorun_on_torrent_added_program": "",
    "autorun_program": "",
    "banned_IPs": "",
    "bittorrent_protocol": 0,
    "block_peers_on_privileged_ports": false,
    "bypass_auth_subnet_whitelist": "",
    "bypass_auth_subnet_whitelist_enabled": false,
    "bypass_local_auth": false,
    "category_changed_tmm_enabled": false,
    "checking_memory_use": 32,
    "connection_speed": 30,
    "current_interface_address": "",
    "current_network_interface": "",
    "disk_cache": 0,
    "disk_cache_ttl": 60,
    "disk_io_read_mode": 1,
    "disk_io_type": 0,
    "disk_io_write_mode": 1,
    "disk_queue_size": 1048576,
    "dont_count_slow_torrents": false,
    "dyndns_domain": "",
    "dyndns_enabled": false,
    "dyndns_password": "",
    "dyndns_service": 0,
    "dyndns_username": "",
    "embedded_tracker_port": 0,
    "embedded_tracker_port_forwarding": false,
    "enable_coalesce_read_write": false,
    "enable_embedded_tracker": false,
    "enable_multi_connections_from_same_ip": false,
    "enable_piece_extent_affinity": false,
    "enable_upload_suggestions": false,
    "excluded_file_names": "",
    "excluded_file_names_enabled": false,
    "export_dir": "",
    "export_dir_fin": "",
    "file_pool_size": 5000,
    "idn_support_enabled": false,
    "ip_filter_enabled": false,
    "ip_filter_path": "",
    "ip_filter_trackers": false,
    "limit_lan_peers": true,
    "limit_tcp_overhead": false,
    "limit_utp_rate": true,
    "mail_notification_auth_enabled": false,
    "mail_notification_email": "",
    "mail_notification_enabled": false,
    "mail_notification_password": "",
    "mail_notification_sender": "",
    "mail_notification_smtp": "",
    "mail_notification_ssl_enabled": false,
    "mail_notification_username": "",
    "max_active_checking_torrents": 1,
    "max_concurrent_http_announces": 50,
    "max_uploads": -1,
    "max_uploads_per_torrent": -1,
    "memory_working_set_limit": 512,
    "outgoing_ports_max": 0,
    "outgoing_ports_min": 0,
    "peer_tos": 4,
    "peer_turnover": 4,
    "peer_turnover_cutoff": 90,
    "peer_turnover_interval": 300,
    "performance_warning": false,
    "proxy_auth_enabled": false,
    "proxy_hostname_lookup": true,
    "proxy_ip": "",
    "proxy_password": "",
    "proxy_peer_connections": false,
    "proxy_port": 0,
    "proxy_torrents_only": false,
    "proxy_type": 0,
    "proxy_username": "",
    "random_port": false,
    "reannounce_when_address_changed": false,
    "recheck_completed_torrents": false,
    "refresh_interval": 1500,
    "request_queue_size": 500,
    "resolve_peer_countries": false,
    "resume_data_storage_type": "Legacy",
    "rss_auto_downloading_enabled": false,
    "rss_download_repack_proper_episodes": true,
    "rss_max_articles_per_feed": 50,
    "rss_processing_enabled": false,
    "rss_refresh_interval": 30,
    "rss_smart_episode_filters": "",
    "save_path_changed_tmm_enabled": false,
    "save_resume_data_interval": 60,
    "schedule_from_hour": 8,
    "schedule_from_min": 0,
    "schedule_to_hour": 20,
    "schedule_to_min": 0,
    "scheduler_days": 0,
    "scheduler_enabled": false,
    "send_buffer_low_watermark": 10,
    "send_buffer_watermark": 500,
    "send_buffer_watermark_factor": 50,
    "slow_torrent_dl_rate_threshold": 2,
    "slow_torrent_inactive_timer": 60,
    "slow_torrent_ul_rate_threshold": 2,
    "socket_backlog_size": 30,
    "ssrf_mitigation": true,
    "stop_tracker_timeout": 5,
    "torrent_changed_tmm_enabled": true,
    "torrent_stop_condition": "None",
    "upload_choking_algorithm": 1,
    "upload_slots_behavior": 0,
    "upnp": false,
    "upnp_lease_duration": 0,
    "use_category_paths_in_manual_mode": false,
    "use_https": false,
    "utp_tcp_mixed_mode": 0,
    "validate_https_tracker_certificate": true,
    "web_ui_ban_duration": 3600,
    "web_ui_clickjacking_protection_enabled": true,
    "web_ui_csrf_protection_enabled": true,
    "web_ui_custom_http_headers": "",
    "web_ui_domain_list": "",
    "web_ui_host_header_validation_enabled": true,
    "web_ui_https_cert_path": "",
    "web_ui_https_key_path": "",
    "web_ui_max_auth_fail_count": 5,
    "web_ui_reverse_proxies_list": "",
    "web_ui_reverse_proxy_enabled": false,
    "web_ui_secure_cookie_enabled": true,
    "web_ui_upnp": false,
    "web_ui_use_custom_http_headers_enabled": false
}"#;

/// Every field `preferences_of` does not set.
pub fn fixed(c: &Config) -> Map<String, Value> {
    let mut m: Map<String, Value> = serde_json::from_str(FIXED).unwrap_or_default();
    let port = c.api.listen.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).unwrap_or(0);
    m.insert("web_ui_port".into(), port.into());
    m.insert("web_ui_session_timeout".into(), auth::SESSION_IDLE.as_secs().into());
    m.insert("web_ui_max_auth_fail_count".into(), auth::MAX_FAILURES.into());
    m.insert("web_ui_ban_duration".into(), auth::BAN.as_secs().into());
    m.insert("hashing_threads".into(), c.storage.disk_threads.into());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_fields_parse_and_say_what_dropseed_does() {
        let m = fixed(&Config::default());
        assert!(m.len() > 100, "{} fields", m.len());
        assert_eq!(m["upnp"], false);
        assert_eq!(m["web_ui_host_header_validation_enabled"], true);
        assert_eq!(m["web_ui_max_auth_fail_count"], 5);
    }
}
