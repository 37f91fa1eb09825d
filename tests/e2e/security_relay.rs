//! Issue 17 hardening end-to-end tests (security_relay).
