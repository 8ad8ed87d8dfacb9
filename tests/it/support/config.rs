//! The config most tests start from: one upstream `emoji` on a mock's
//! port, a token file, fast shutdown. Each test adds what it is about.
//! The result is a template for [`super::render`] (`{listen}`, `{admin}`,
//! `{dir}`).

/// The top of every test config: graceway's listeners on `{listen}` and
/// `{admin}`, its pid file in `{dir}`, a 1 s shutdown. Tests that need
/// upstreams of their own shape put theirs after it.
pub const HEAD: &str = r#"
listen: "127.0.0.1:{listen}"
admin: { listen: "127.0.0.1:{admin}" }
pid_file: "{dir}/graceway.pid"
server: { graceful_shutdown_timeout: 1s }
"#;

pub struct EmojiConfig {
    port: u16,
    read: &'static str,
    health: Option<String>,
    tokens: String,
    upstream_extra: String,
    top_extra: String,
    server: String,
}

impl EmojiConfig {
    /// `timeouts: { connect: 1s, read: 2s }`, one token from `{dir}/token`.
    pub fn new(port: u16) -> EmojiConfig {
        EmojiConfig {
            port,
            read: "2s",
            health: None,
            tokens: "        - { file: \"{dir}/token\" }".into(),
            upstream_extra: String::new(),
            top_extra: String::new(),
            server: "graceful_shutdown_timeout: 1s".into(),
        }
    }

    pub fn read_timeout(mut self, read: &'static str) -> EmojiConfig {
        self.read = read;
        self
    }

    /// The `health:` value, e.g. `{ open_after: 2 }`.
    pub fn health(mut self, health: &str) -> EmojiConfig {
        self.health = Some(health.to_string());
        self
    }

    /// Replaces the token list: YAML lines indented 8 spaces.
    pub fn tokens(mut self, lines: &str) -> EmojiConfig {
        self.tokens = lines.to_string();
        self
    }

    /// Lines after the token list, inside the upstream (indent 4 for
    /// upstream keys, 6 for `credentials` keys).
    pub fn upstream(mut self, lines: &str) -> EmojiConfig {
        self.upstream_extra = lines.to_string();
        self
    }

    /// Top-level keys after `upstreams` (`cache:`, `memory:`, `log:` ...).
    pub fn top(mut self, lines: &str) -> EmojiConfig {
        self.top_extra = lines.to_string();
        self
    }

    /// Keys of `server:`, e.g. `request_header_timeout: 1s`; with
    /// `graceful_shutdown_timeout: 1s` unless they set it.
    pub fn server(mut self, keys: &str) -> EmojiConfig {
        self.server = if keys.contains("graceful_shutdown_timeout") {
            keys.to_string()
        } else {
            format!("graceful_shutdown_timeout: 1s, {keys}")
        };
        self
    }

    pub fn build(&self) -> String {
        let health = self
            .health
            .as_ref()
            .map(|h| format!("    health: {h}\n"))
            .unwrap_or_default();
        format!(
            r#"
listen: "127.0.0.1:{{listen}}"
admin: {{ listen: "127.0.0.1:{{admin}}" }}
pid_file: "{{dir}}/graceway.pid"
server: {{ {server} }}
upstreams:
  - name: emoji
    url: "http://127.0.0.1:{port}"
    timeouts: {{ connect: 1s, read: {read} }}
{health}    credentials:
      tokens:
{tokens}
{upstream}
{top}
"#,
            port = self.port,
            read = self.read,
            tokens = self.tokens,
            upstream = self.upstream_extra,
            top = self.top_extra,
            server = self.server,
        )
    }
}
