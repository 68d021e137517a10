//! The policy in force and the validation of create requests against it.
//!
//! Validation happens in two passes, both pure:
//! - `Policy::check_request` runs in the API handler on the request alone and either returns a
//!   `LaunchSpec` (proof that every static rule holds) or every `Violation` found;
//! - `Policy::check_image` runs in the create job once the cloud has described the AMI and the
//!   instance type (owner and architecture are facts only the cloud knows).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One broken rule: the request field at fault and a message naming the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

impl Violation {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Violation {
        Violation { field: field.into(), message: message.into() }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// CPU credit mode for burstable instance types (t2, t3, t4g).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuCredits {
    Standard,
    Unlimited,
}

impl CpuCredits {
    pub const ALL: [CpuCredits; 2] = [CpuCredits::Standard, CpuCredits::Unlimited];

    pub fn as_str(self) -> &'static str {
        match self {
            CpuCredits::Standard => "standard",
            CpuCredits::Unlimited => "unlimited",
        }
    }
}

impl FromStr for CpuCredits {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "standard" => Ok(CpuCredits::Standard),
            "unlimited" => Ok(CpuCredits::Unlimited),
            _ => Err(()),
        }
    }
}

/// Which AMIs may be launched in a region: any AMI listed in `ids`, or any AMI whose owner
/// (account id or alias such as `amazon`) is in `owners`. Both empty means any AMI.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmiRule {
    pub owners: Vec<String>,
    pub ids: Vec<String>,
    /// The user to log in as on instances of an AMI, by AMI id or owner (account id or
    /// alias), where `login_user`'s guess from the AMI's owner and name is wrong.
    pub login_users: BTreeMap<String, String>,
}

/// The user to log in as on an instance of `image`: the rule's `login_users` entry for the
/// AMI or its owner, else what the owner or the AMI's name implies (`ec2-user` for Amazon
/// Linux, RHEL and SUSE, `ubuntu` for Ubuntu, `admin` for Debian, …), else `ec2-user`.
pub fn login_user(rule: &AmiRule, image: &ImageFacts) -> String {
    let keys = [Some(&image.id), Some(&image.owner_id), image.owner_alias.as_ref()];
    if let Some(user) = keys.into_iter().flatten().find_map(|key| rule.login_users.get(key)) {
        return user.clone();
    }
    let by_owner = match image.owner_id.as_str() {
        "099720109477" => Some("ubuntu"),
        "136693071363" => Some("admin"),
        "137112412989" => Some("ec2-user"),
        _ => None,
    };
    let name = image.name.as_deref().unwrap_or_default().to_ascii_lowercase();
    let by_name = [
        ("ubuntu", "ubuntu"),
        ("debian", "admin"),
        ("centos", "centos"),
        ("fedora", "fedora"),
        ("rocky", "rocky"),
        ("almalinux", "ec2-user"),
        ("bitnami", "bitnami"),
    ]
    .into_iter()
    .find(|(word, _)| name.contains(word))
    .map(|(_, user)| user);
    by_owner.or(by_name).unwrap_or("ec2-user").to_string()
}

/// Whether `user` can be a login user: what `useradd` accepts by default, and nothing a shell
/// would read as more than a word.
fn is_valid_login_user(user: &str) -> bool {
    let mut chars = user.chars();
    user.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Which existing security groups a request may attach in a region: those in `ids` from any
/// namespace, and those listed for its own namespace in `namespaces`. Nothing listed: none; a
/// request that needs traffic in asks for `ingress` rules, and corral makes a group of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityGroupRule {
    pub ids: Vec<String>,
    pub namespaces: BTreeMap<String, Vec<String>>,
}

impl SecurityGroupRule {
    /// The groups a request in `namespace` may attach.
    pub fn allowed_for(&self, namespace: &str) -> Vec<&str> {
        let own = self.namespaces.get(namespace).into_iter().flatten();
        self.ids.iter().chain(own).map(String::as_str).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageRange {
    pub min: i64,
    pub max: i64,
    pub default: i64,
}

/// The guardrails every create request must satisfy. Loaded from the config file; every field
/// left out keeps the value of the built-in `free-tier` profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// A label for the policy in force, shown by `GET /v1/policy`.
    pub profile: String,
    /// Region used when a request names none; must be one of `regions`.
    pub default_region: String,
    pub regions: Vec<String>,
    pub instance_types: Vec<String>,
    /// AMI rules keyed by region; the key `*` applies to regions without their own entry.
    pub amis: BTreeMap<String, AmiRule>,
    /// Root volume size in GiB.
    pub storage_gb: StorageRange,
    /// Credit modes allowed for burstable types; the first is used when a request names none.
    pub cpu_credits: Vec<CpuCredits>,
    /// Most instances one request may create.
    pub max_count: i64,
    /// Largest `user_data` accepted, in bytes before base64 (EC2's own limit is 16 KiB).
    pub user_data_max_bytes: usize,
    /// Existing security groups requests may attach, keyed by region (`*`: regions without
    /// their own entry). Empty: none, so that no request can join a group other teams' resources
    /// trust.
    pub security_groups: BTreeMap<String, SecurityGroupRule>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy::free_tier()
    }
}

/// Owners of the public AMIs that the free-tier profile allows: Amazon (alias and account),
/// Canonical (Ubuntu) and Debian.
const FREE_TIER_AMI_OWNERS: [&str; 4] = ["amazon", "137112412989", "099720109477", "136693071363"];

/// Tag key prefixes a request may not set: `aws:` belongs to AWS and `corral:` to corral.
const RESERVED_TAG_PREFIXES: [&str; 2] = ["aws:", "corral:"];
const MAX_USER_TAGS: usize = 40;

/// The tags of an instance that its user set: every tag but `Name` (the instance's name) and
/// those under `RESERVED_TAG_PREFIXES`.
pub fn user_tags(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    tags.iter()
        .filter(|(key, _)| {
            let lower = key.to_ascii_lowercase();
            *key != "Name" && !RESERVED_TAG_PREFIXES.iter().any(|prefix| lower.starts_with(prefix))
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}
const MAX_SECURITY_GROUPS: usize = 5;
/// Most ingress rules one request may ask for (EC2 allows 60 per security group).
const MAX_INGRESS_RULES: usize = 20;

impl Policy {
    /// EC2's free tier as it stands: t2.micro/t3.micro on accounts created before July 2025,
    /// t3.micro, t3.small, t4g.micro and t4g.small on newer ones; at most 30 GB of EBS; CPU
    /// credits `standard` (t3 and t4g default to `unlimited`, which bills).
    pub fn free_tier() -> Policy {
        let all_regions = AmiRule {
            owners: FREE_TIER_AMI_OWNERS.iter().map(|s| s.to_string()).collect(),
            ..AmiRule::default()
        };
        Policy {
            profile: "free-tier".to_string(),
            default_region: "us-east-1".to_string(),
            regions: ["us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1"]
                .map(String::from)
                .to_vec(),
            instance_types: ["t2.micro", "t3.micro", "t3.small", "t4g.micro", "t4g.small"]
                .map(String::from)
                .to_vec(),
            amis: BTreeMap::from([("*".to_string(), all_regions)]),
            storage_gb: StorageRange { min: 1, max: 30, default: 8 },
            cpu_credits: vec![CpuCredits::Standard],
            max_count: 10,
            user_data_max_bytes: 16 * 1024,
            security_groups: BTreeMap::new(),
        }
    }

    /// Checks the policy itself, so that a broken config file stops `corral serve` at start.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.regions.is_empty() {
            problems.push("policy.regions: must list at least one region".to_string());
        }
        if !self.regions.contains(&self.default_region) {
            problems.push(format!(
                "policy.default_region: '{}' is not in policy.regions ({})",
                self.default_region,
                self.regions.join(", ")
            ));
        }
        if self.instance_types.is_empty() {
            problems.push("policy.instance_types: must list at least one type".to_string());
        }
        let storage = self.storage_gb;
        if storage.min < 1 || storage.min > storage.max {
            problems.push(format!(
                "policy.storage_gb: min ({}) must be at least 1 and at most max ({})",
                storage.min, storage.max
            ));
        }
        if storage.default < storage.min || storage.default > storage.max {
            problems.push(format!(
                "policy.storage_gb.default: {} is outside {}-{}",
                storage.default, storage.min, storage.max
            ));
        }
        if self.cpu_credits.is_empty() {
            problems.push("policy.cpu_credits: must list at least one mode".to_string());
        }
        if self.max_count < 1 {
            problems.push("policy.max_count: must be at least 1".to_string());
        }
        for (region, rule) in &self.amis {
            if region != "*" && !self.regions.contains(region) {
                problems.push(format!("policy.amis.{region}: region is not in policy.regions"));
            }
            for (image, user) in &rule.login_users {
                if !is_valid_login_user(user) {
                    problems.push(format!(
                        "policy.amis.{region}.login_users.{image}: '{user}' is not a user name \
                         (lowercase letters, digits, '_' and '-', starting with a letter or '_')"
                    ));
                }
            }
        }
        for (region, rule) in &self.security_groups {
            if region != "*" && !self.regions.contains(region) {
                problems.push(format!(
                    "policy.security_groups.{region}: region is not in policy.regions"
                ));
            }
            let listed = rule.ids.iter().chain(rule.namespaces.values().flatten());
            for group in listed.filter(|group| !is_valid_prefixed_hex(group, "sg-")) {
                problems.push(format!(
                    "policy.security_groups.{region}: '{group}' is not a security group id"
                ));
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }

    /// The security groups a request in `namespace` may attach in `region`.
    pub fn allowed_security_groups(&self, region: &str, namespace: &str) -> Vec<&str> {
        let rule = self.security_groups.get(region).or_else(|| self.security_groups.get("*"));
        rule.map(|rule| rule.allowed_for(namespace)).unwrap_or_default()
    }

    /// The AMI rule for `region`: its own entry, else the `*` entry, else anything goes.
    pub fn ami_rule(&self, region: &str) -> AmiRule {
        self.amis.get(region).or_else(|| self.amis.get("*")).cloned().unwrap_or_default()
    }

    /// Checks every rule that needs no cloud lookup; returns the launch spec or all violations.
    pub fn check_request(&self, request: &CreateRequest) -> Result<LaunchSpec, Vec<Violation>> {
        let mut violations = Vec::new();

        let count = request.count.unwrap_or(1);
        if !(1..=self.max_count).contains(&count) {
            violations.push(Violation::new(
                "count",
                format!("must be between 1 and {} (policy max_count), got {count}", self.max_count),
            ));
        }

        let names = self.check_names(request, count, &mut violations);

        let namespace = request.namespace.clone().unwrap_or_else(|| "default".to_string());
        if !is_valid_namespace(&namespace) {
            violations.push(Violation::new(
                "namespace",
                "must be 1-63 characters of lowercase letters, digits and '-', \
                 starting and ending with a letter or digit",
            ));
        }

        let region = request.region.clone().unwrap_or_else(|| self.default_region.clone());
        if !self.regions.contains(&region) {
            violations.push(Violation::new(
                "region",
                format!("'{region}' is not allowed; allowed: {}", self.regions.join(", ")),
            ));
        }

        let instance_type = match &request.instance_type {
            None => {
                violations.push(Violation::new(
                    "instance_type",
                    format!("is required; allowed: {}", self.instance_types.join(", ")),
                ));
                String::new()
            }
            Some(instance_type) => {
                if !self.instance_types.contains(instance_type) {
                    violations.push(Violation::new(
                        "instance_type",
                        format!(
                            "'{instance_type}' is not allowed; allowed: {}",
                            self.instance_types.join(", ")
                        ),
                    ));
                }
                instance_type.clone()
            }
        };

        let ami = match &request.ami {
            None => {
                violations.push(Violation::new("ami", "is required, e.g. ami-0123456789abcdef0"));
                String::new()
            }
            Some(ami) if !is_valid_ami_id(ami) => {
                violations.push(Violation::new(
                    "ami",
                    format!(
                        "'{ami}' is not an AMI id; expected ami- followed by letters and digits"
                    ),
                ));
                ami.clone()
            }
            Some(ami) => {
                let rule = self.ami_rule(&region);
                if !rule.ids.is_empty() && rule.owners.is_empty() && !rule.ids.contains(ami) {
                    violations.push(Violation::new(
                        "ami",
                        format!(
                            "'{ami}' is not allowed in {region}; allowed: {}",
                            rule.ids.join(", ")
                        ),
                    ));
                }
                ami.clone()
            }
        };

        let storage = self.storage_gb;
        let storage_gb = request.storage_gb.unwrap_or(storage.default);
        if !(storage.min..=storage.max).contains(&storage_gb) {
            violations.push(Violation::new(
                "storage_gb",
                format!(
                    "{storage_gb} GB is outside the allowed range {}-{} GB",
                    storage.min, storage.max
                ),
            ));
        }

        let allowed_credits: Vec<&str> = self.cpu_credits.iter().map(|c| c.as_str()).collect();
        let cpu_credits = match request.cpu_credits.as_deref() {
            None => self.cpu_credits.first().copied().unwrap_or(CpuCredits::Standard),
            Some(raw) => match raw.parse::<CpuCredits>() {
                Ok(credits) if self.cpu_credits.contains(&credits) => credits,
                _ => {
                    violations.push(Violation::new(
                        "cpu_credits",
                        format!("'{raw}' is not allowed; allowed: {}", allowed_credits.join(", ")),
                    ));
                    CpuCredits::Standard
                }
            },
        };

        if let Some(key_name) = &request.key_name
            && !is_valid_key_name(key_name)
        {
            violations.push(Violation::new("key_name", KEY_NAME_RULE));
        }
        let ingress = check_ingress(&request.ingress, request.caller_ip, &mut violations);

        if request.security_group_ids.len() > MAX_SECURITY_GROUPS {
            violations.push(Violation::new(
                "security_group_ids",
                format!("at most {MAX_SECURITY_GROUPS} security groups are allowed"),
            ));
        }
        let allowed_groups = self.allowed_security_groups(&region, &namespace);
        for (idx, group) in request.security_group_ids.iter().enumerate() {
            let message = if !is_valid_prefixed_hex(group, "sg-") {
                format!("'{group}' is not a security group id; expected sg- followed by hex digits")
            } else if !allowed_groups.contains(&group.as_str()) {
                let allowed = if allowed_groups.is_empty() {
                    "none are (policy.security_groups)".to_string()
                } else {
                    format!("allowed: {}", allowed_groups.join(", "))
                };
                format!(
                    "'{group}' may not be attached in {region} by namespace '{namespace}'; \
                     {allowed}. Ask for ingress rules instead: corral makes a group of the \
                     request's own"
                )
            } else {
                continue;
            };
            violations.push(Violation::new(format!("security_group_ids[{idx}]"), message));
        }

        if let Some(user_data) = &request.user_data
            && user_data.len() > self.user_data_max_bytes
        {
            violations.push(Violation::new(
                "user_data",
                format!(
                    "{} bytes exceeds the limit of {} bytes",
                    user_data.len(),
                    self.user_data_max_bytes
                ),
            ));
        }

        check_tags(&request.tags, &mut violations);

        if !violations.is_empty() {
            return Err(violations);
        }
        Ok(LaunchSpec {
            names,
            namespace,
            region,
            ami,
            instance_type,
            storage_gb,
            key_name: request.key_name.clone(),
            security_group_ids: request.security_group_ids.clone(),
            user_data: request.user_data.clone(),
            tags: request.tags.clone(),
            cpu_credits,
            ingress,
        })
    }

    fn check_names(
        &self,
        request: &CreateRequest,
        count: i64,
        violations: &mut Vec<Violation>,
    ) -> Vec<String> {
        match (&request.name, &request.name_prefix) {
            (None, None) => {
                violations.push(Violation::new("name", "is required (or name_prefix with count)"));
                Vec::new()
            }
            (Some(_), Some(_)) => {
                violations
                    .push(Violation::new("name", "give either name or name_prefix, not both"));
                Vec::new()
            }
            (Some(name), None) => {
                if !is_valid_instance_name(name) {
                    violations.push(Violation::new("name", NAME_RULE));
                }
                if count > 1 {
                    violations.push(Violation::new(
                        "name",
                        format!("one name cannot be given to {count} instances; use name_prefix"),
                    ));
                }
                vec![name.clone()]
            }
            (None, Some(prefix)) => {
                // Leave room for the "-<n>" suffix within the 64-character name limit.
                if !is_valid_name(prefix, 60) {
                    violations.push(Violation::new(
                        "name_prefix",
                        "must be 1-60 characters of letters, digits, '-', '_' or '.', \
                         starting with a letter or digit",
                    ));
                }
                let count = count.clamp(1, self.max_count.max(1));
                (1..=count).map(|n| format!("{prefix}-{n}")).collect()
            }
        }
    }

    /// Checks the rules that depend on what the cloud says about the AMI and instance type.
    pub fn check_image(
        &self,
        spec: &LaunchSpec,
        image: &ImageFacts,
        instance_type: &InstanceTypeFacts,
    ) -> Vec<Violation> {
        let mut violations = Vec::new();
        let rule = self.ami_rule(&spec.region);
        let listed = rule.ids.contains(&image.id);
        let owner_allowed = rule.owners.iter().any(|owner| {
            *owner == image.owner_id || image.owner_alias.as_deref() == Some(owner.as_str())
        });
        if !rule.owners.is_empty() && !listed && !owner_allowed {
            let mut allowed = rule.owners.clone();
            allowed.extend(rule.ids.iter().cloned());
            violations.push(Violation::new(
                "ami",
                format!(
                    "'{}' belongs to owner {} which is not allowed in {}; allowed: {}",
                    image.id,
                    image.owner_id,
                    spec.region,
                    allowed.join(", ")
                ),
            ));
        }
        if !instance_type.architectures.contains(&image.architecture) {
            violations.push(Violation::new(
                "instance_type",
                format!(
                    "'{}' supports {} but AMI '{}' is {}; choose a matching instance type or AMI",
                    instance_type.name,
                    instance_type.architectures.join(", "),
                    image.id,
                    image.architecture
                ),
            ));
        }
        violations
    }
}

/// Checks a new name and tags for an existing instance, by the rules a create request follows.
pub fn check_name_and_tags(name: &str, tags: &BTreeMap<String, String>) -> Vec<Violation> {
    let mut violations = Vec::new();
    if !is_valid_instance_name(name) {
        violations.push(Violation::new("name", NAME_RULE));
    }
    check_tags(tags, &mut violations);
    violations
}

pub const KEY_NAME_RULE: &str = "must be 1-255 printable ASCII characters";

/// Whether `name` is acceptable as an EC2 key pair name.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.chars().all(|c| c.is_ascii_graphic() || c == ' ')
}

/// Checks the requested ingress rules; `cidr: "caller"` becomes the caller's address alone.
fn check_ingress(
    rules: &[IngressRequest],
    caller_ip: Option<IpAddr>,
    violations: &mut Vec<Violation>,
) -> Vec<IngressRule> {
    if rules.len() > MAX_INGRESS_RULES {
        violations.push(Violation::new(
            "ingress",
            format!("at most {MAX_INGRESS_RULES} rules are allowed, got {}", rules.len()),
        ));
    }
    let mut checked = Vec::new();
    for (idx, rule) in rules.iter().enumerate() {
        let field = |name: &str| format!("ingress[{idx}].{name}");
        let port = match rule.port {
            Some(port @ 1..=65535) => port as u16,
            Some(port) => {
                violations.push(Violation::new(
                    field("port"),
                    format!("{port} is not a port; expected 1-65535"),
                ));
                continue;
            }
            None => {
                violations.push(Violation::new(field("port"), "is required, e.g. 22"));
                continue;
            }
        };
        let protocol = rule.protocol.as_deref().unwrap_or("tcp");
        if !matches!(protocol, "tcp" | "udp") {
            violations.push(Violation::new(
                field("protocol"),
                format!("'{protocol}' is not allowed; allowed: tcp, udp"),
            ));
            continue;
        }
        let cidr = match rule.cidr.as_deref() {
            None => {
                violations.push(Violation::new(
                    field("cidr"),
                    "is required: an address range such as 203.0.113.0/24, or \"caller\" for \
                     the address this request came from",
                ));
                continue;
            }
            Some("caller") => match caller_ip {
                Some(IpAddr::V4(ip)) => format!("{ip}/32"),
                Some(IpAddr::V6(ip)) => match ip.to_ipv4_mapped() {
                    Some(v4) => format!("{v4}/32"),
                    None => format!("{ip}/128"),
                },
                None => {
                    violations.push(Violation::new(
                        field("cidr"),
                        "\"caller\" needs the client's address, which this request does not have",
                    ));
                    continue;
                }
            },
            Some(cidr) => match parse_cidr(cidr) {
                Some(cidr) => cidr,
                None => {
                    violations.push(Violation::new(
                        field("cidr"),
                        format!(
                            "'{cidr}' is not an address range; expected e.g. 203.0.113.0/24, \
                             2001:db8::/32 or \"caller\""
                        ),
                    ));
                    continue;
                }
            },
        };
        let rule = IngressRule { port, protocol: protocol.to_string(), cidr };
        if !checked.contains(&rule) {
            checked.push(rule);
        }
    }
    checked
}

/// `network/prefix` (host bits cleared), or `None` when `cidr` is not an address range.
fn parse_cidr(cidr: &str) -> Option<String> {
    let (address, prefix) = cidr.split_once('/')?;
    let prefix: u32 = prefix.parse().ok()?;
    match address.parse::<IpAddr>().ok()? {
        IpAddr::V4(ip) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
            Some(format!("{}/{prefix}", std::net::Ipv4Addr::from(u32::from(ip) & mask)))
        }
        IpAddr::V6(ip) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            Some(format!("{}/{prefix}", std::net::Ipv6Addr::from(u128::from(ip) & mask)))
        }
        _ => None,
    }
}

const NAME_RULE: &str = "must be 1-64 characters of letters, digits, '-', '_' or '.', starting \
     with a letter or digit, and not look like an instance id (i-…, a UUID) or be 'actions'";

fn check_tags(tags: &BTreeMap<String, String>, violations: &mut Vec<Violation>) {
    if tags.len() > MAX_USER_TAGS {
        violations.push(Violation::new(
            "tags",
            format!("at most {MAX_USER_TAGS} tags are allowed, got {}", tags.len()),
        ));
    }
    for (key, value) in tags {
        let field = format!("tags.{key}");
        if key.is_empty() || key.chars().count() > 128 {
            violations.push(Violation::new(field, "keys must be 1-128 characters"));
        } else if let Some(prefix) = RESERVED_TAG_PREFIXES
            .iter()
            .find(|prefix| key.to_ascii_lowercase().starts_with(**prefix))
        {
            violations.push(Violation::new(field, format!("the prefix '{prefix}' is reserved")));
        } else if key == "Name" {
            violations.push(Violation::new(field, "set the Name tag through the name field"));
        } else if value.chars().count() > 256 {
            violations.push(Violation::new(field, "values must be at most 256 characters"));
        } else if key.chars().chain(value.chars()).any(char::is_control) {
            // EC2 cannot carry them (its answers are XML), and terminals would run them.
            violations
                .push(Violation::new(field, "keys and values may not hold control characters"));
        }
    }
}

fn is_valid_name(name: &str, max_len: usize) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else { return false };
    name.len() <= max_len
        && first.is_ascii_alphanumeric()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Whether `name` is one an instance may be given (`NAME_RULE`): names are found as ids are,
/// so none may look like an id (an EC2 one, `i-…`, or corral's, a UUID) or be a route.
pub fn is_valid_instance_name(name: &str) -> bool {
    let hex = |part: &str, len: std::ops::RangeInclusive<usize>| {
        len.contains(&part.len()) && part.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let ec2_id = name.strip_prefix("i-").is_some_and(|rest| hex(rest, 8..=17));
    let parts: Vec<&str> = name.split('-').collect();
    let uuid = parts.len() == 5
        && parts.iter().zip([8, 4, 4, 4, 12]).all(|(part, len)| hex(part, len..=len));
    is_valid_name(name, 64) && !ec2_id && !uuid && name != "actions"
}

pub fn is_valid_namespace(namespace: &str) -> bool {
    !namespace.is_empty()
        && namespace.len() <= 63
        && namespace.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !namespace.starts_with('-')
        && !namespace.ends_with('-')
}

fn is_valid_ami_id(ami: &str) -> bool {
    ami.strip_prefix("ami-").is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 32 && rest.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

fn is_valid_prefixed_hex(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty() && rest.len() <= 32 && rest.chars().all(|c| c.is_ascii_hexdigit())
    })
}

/// A create request as the client sent it; every field optional so that all problems,
/// missing fields included, are reported together.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: Option<String>,
    pub name_prefix: Option<String>,
    pub count: Option<i64>,
    pub region: Option<String>,
    pub ami: Option<String>,
    pub instance_type: Option<String>,
    pub storage_gb: Option<i64>,
    pub cpu_credits: Option<String>,
    pub key_name: Option<String>,
    pub security_group_ids: Vec<String>,
    pub user_data: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub namespace: Option<String>,
    pub ingress: Vec<IngressRequest>,
    /// Address the request came from, for ingress rules with `cidr: "caller"`.
    pub caller_ip: Option<IpAddr>,
}

/// One ingress rule as the client sent it.
#[derive(Debug, Clone, Default)]
pub struct IngressRequest {
    pub port: Option<i64>,
    pub protocol: Option<String>,
    pub cidr: Option<String>,
}

/// Traffic let in to the instances of one request: `protocol` (`tcp` or `udp`) to `port` from
/// the address range `cidr` (IPv4 or IPv6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressRule {
    pub port: u16,
    pub protocol: String,
    pub cidr: String,
}

impl IngressRule {
    pub fn is_ipv6(&self) -> bool {
        self.cidr.contains(':')
    }
}

/// A create request that passed every static rule: what to launch, and the name of each
/// instance (one per instance to create).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub names: Vec<String>,
    pub namespace: String,
    pub region: String,
    pub ami: String,
    pub instance_type: String,
    pub storage_gb: i64,
    pub key_name: Option<String>,
    pub security_group_ids: Vec<String>,
    pub user_data: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub cpu_credits: CpuCredits,
    /// Rules of the security group corral creates for the request; empty: none is created.
    #[serde(default)]
    pub ingress: Vec<IngressRule>,
}

/// What the cloud says about an AMI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    pub id: String,
    pub owner_id: String,
    pub owner_alias: Option<String>,
    /// `x86_64`, `arm64`, `i386`, …
    pub architecture: String,
    /// Device name of the root volume, where the storage size is applied.
    pub root_device_name: Option<String>,
    /// The AMI's name (`al2023-ami-…`, `ubuntu/images/…`), which tells its login user.
    pub name: Option<String>,
}

/// What the cloud says about an instance type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypeFacts {
    pub name: String,
    pub architectures: Vec<String>,
    pub vcpus: i32,
    pub burstable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_request() -> CreateRequest {
        CreateRequest {
            name: Some("web".to_string()),
            ami: Some("ami-0123456789abcdef0".to_string()),
            instance_type: Some("t3.micro".to_string()),
            ..CreateRequest::default()
        }
    }

    /// Applies `edit` to a valid request and renders the outcome: `ok` or one line per violation.
    fn check(edit: impl FnOnce(&mut CreateRequest)) -> String {
        let mut request = valid_request();
        edit(&mut request);
        match Policy::free_tier().check_request(&request) {
            Ok(_) => "ok".to_string(),
            Err(violations) => {
                violations.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n")
            }
        }
    }

    #[test]
    fn free_tier_policy_is_valid() {
        assert_eq!(Policy::free_tier().validate(), Ok(()));
    }

    #[test]
    fn every_static_rule_reports_its_own_message() {
        type Edit = Box<dyn FnOnce(&mut CreateRequest)>;
        let cases: Vec<(&str, Edit, &str)> = vec![
            ("valid", Box::new(|_| {}), "ok"),
            (
                "count zero",
                Box::new(|r| r.count = Some(0)),
                "count: must be between 1 and 10 (policy max_count), got 0",
            ),
            (
                "count too big",
                Box::new(|r| {
                    r.name = None;
                    r.name_prefix = Some("w".into());
                    r.count = Some(11)
                }),
                "count: must be between 1 and 10 (policy max_count), got 11",
            ),
            (
                "no name",
                Box::new(|r| r.name = None),
                "name: is required (or name_prefix with count)",
            ),
            (
                "both names",
                Box::new(|r| r.name_prefix = Some("w".into())),
                "name: give either name or name_prefix, not both",
            ),
            (
                "name with count",
                Box::new(|r| r.count = Some(2)),
                "name: one name cannot be given to 2 instances; use name_prefix",
            ),
            (
                "bad name",
                Box::new(|r| r.name = Some("-x".into())),
                "name: must be 1-64 characters of letters, digits, '-', '_' or '.', starting with a letter or digit, and not look like an instance id (i-…, a UUID) or be 'actions'",
            ),
            (
                "bad prefix",
                Box::new(|r| {
                    r.name = None;
                    r.name_prefix = Some("a b".into())
                }),
                "name_prefix: must be 1-60 characters of letters, digits, '-', '_' or '.', starting with a letter or digit",
            ),
            (
                "bad namespace",
                Box::new(|r| r.namespace = Some("Team A".into())),
                "namespace: must be 1-63 characters of lowercase letters, digits and '-', starting and ending with a letter or digit",
            ),
            (
                "region",
                Box::new(|r| r.region = Some("ap-south-1".into())),
                "region: 'ap-south-1' is not allowed; allowed: us-east-1, us-east-2, us-west-1, us-west-2, eu-west-1",
            ),
            (
                "no type",
                Box::new(|r| r.instance_type = None),
                "instance_type: is required; allowed: t2.micro, t3.micro, t3.small, t4g.micro, t4g.small",
            ),
            (
                "type",
                Box::new(|r| r.instance_type = Some("m5.large".into())),
                "instance_type: 'm5.large' is not allowed; allowed: t2.micro, t3.micro, t3.small, t4g.micro, t4g.small",
            ),
            ("no ami", Box::new(|r| r.ami = None), "ami: is required, e.g. ami-0123456789abcdef0"),
            (
                "bad ami",
                Box::new(|r| r.ami = Some("ubuntu".into())),
                "ami: 'ubuntu' is not an AMI id; expected ami- followed by letters and digits",
            ),
            (
                "storage low",
                Box::new(|r| r.storage_gb = Some(0)),
                "storage_gb: 0 GB is outside the allowed range 1-30 GB",
            ),
            (
                "storage high",
                Box::new(|r| r.storage_gb = Some(31)),
                "storage_gb: 31 GB is outside the allowed range 1-30 GB",
            ),
            ("storage max", Box::new(|r| r.storage_gb = Some(30)), "ok"),
            (
                "credits",
                Box::new(|r| r.cpu_credits = Some("unlimited".into())),
                "cpu_credits: 'unlimited' is not allowed; allowed: standard",
            ),
            (
                "key",
                Box::new(|r| r.key_name = Some(String::new())),
                "key_name: must be 1-255 printable ASCII characters",
            ),
            (
                "sg",
                Box::new(|r| r.security_group_ids = vec!["default".into()]),
                "security_group_ids[0]: 'default' is not a security group id; expected sg- followed by hex digits",
            ),
            (
                "user data",
                Box::new(|r| r.user_data = Some("x".repeat(16 * 1024 + 1))),
                "user_data: 16385 bytes exceeds the limit of 16384 bytes",
            ),
            (
                "reserved tag",
                Box::new(|r| {
                    r.tags.insert("corral:job-id".into(), "x".into());
                }),
                "tags.corral:job-id: the prefix 'corral:' is reserved",
            ),
            (
                "aws tag",
                Box::new(|r| {
                    r.tags.insert("AWS:x".into(), "x".into());
                }),
                "tags.AWS:x: the prefix 'aws:' is reserved",
            ),
            (
                "name tag",
                Box::new(|r| {
                    r.tags.insert("Name".into(), "x".into());
                }),
                "tags.Name: set the Name tag through the name field",
            ),
            (
                "control characters",
                Box::new(|r| {
                    r.tags.insert("paint".into(), "\u{1b}[2J".into());
                }),
                "tags.paint: keys and values may not hold control characters",
            ),
            (
                "long tag value",
                Box::new(|r| {
                    r.tags.insert("team".into(), "x".repeat(257));
                }),
                "tags.team: values must be at most 256 characters",
            ),
        ];
        for (label, edit, expected) in cases {
            assert_eq!(check(edit), expected, "case: {label}");
        }
    }

    #[test]
    fn all_violations_are_reported_together() {
        let outcome = check(|r| {
            r.region = Some("mars-1".into());
            r.instance_type = Some("p5.48xlarge".into());
            r.storage_gb = Some(500);
        });
        let fields: Vec<&str> = outcome.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(fields, ["region", "instance_type", "storage_gb"]);
    }

    #[test]
    fn name_prefix_names_each_instance() {
        let mut request = valid_request();
        request.name = None;
        request.name_prefix = Some("build".into());
        request.count = Some(3);
        let spec = Policy::free_tier().check_request(&request).unwrap();
        assert_eq!(spec.names, ["build-1", "build-2", "build-3"]);
        assert_eq!(spec.region, "us-east-1");
        assert_eq!(spec.namespace, "default");
        assert_eq!(spec.storage_gb, 8);
        assert_eq!(spec.cpu_credits, CpuCredits::Standard);
    }

    #[test]
    fn only_listed_security_groups_may_be_attached_per_region_and_namespace() {
        let mut request = valid_request();
        request.security_group_ids = vec!["sg-0aa".into()];
        // By default, none: another team's group is never joined.
        let violations = Policy::free_tier().check_request(&request).unwrap_err();
        assert_eq!(
            violations[0].to_string(),
            "security_group_ids[0]: 'sg-0aa' may not be attached in us-east-1 by namespace \
             'default'; none are (policy.security_groups). Ask for ingress rules instead: corral \
             makes a group of the request's own"
        );
        let mut policy = Policy::free_tier();
        policy.security_groups.insert(
            "us-east-1".into(),
            SecurityGroupRule {
                ids: vec!["sg-0bb".into()],
                namespaces: BTreeMap::from([("team-a".into(), vec!["sg-0aa".into()])]),
            },
        );
        assert!(policy.check_request(&request).is_err(), "sg-0aa is team-a's only");
        request.namespace = Some("team-a".into());
        assert!(policy.check_request(&request).is_ok());
        request.security_group_ids = vec!["sg-0bb".into()];
        request.namespace = None;
        assert!(policy.check_request(&request).is_ok(), "sg-0bb is everyone's in us-east-1");
        request.region = Some("us-west-2".into());
        let violations = policy.check_request(&request).unwrap_err();
        assert!(violations[0].message.contains("in us-west-2"), "{violations:?}");
        policy.security_groups.insert("eu-central-1".into(), SecurityGroupRule::default());
        assert!(policy.validate().unwrap_err()[0].contains("policy.security_groups.eu-central-1"));
    }

    #[test]
    fn ami_id_allow_list_is_checked_per_region() {
        let mut policy = Policy::free_tier();
        policy.amis.insert(
            "us-west-2".into(),
            AmiRule { ids: vec!["ami-aaaa".into()], ..AmiRule::default() },
        );
        let mut request = valid_request();
        request.region = Some("us-west-2".into());
        let violations = policy.check_request(&request).unwrap_err();
        assert_eq!(
            violations[0].to_string(),
            "ami: 'ami-0123456789abcdef0' is not allowed in us-west-2; allowed: ami-aaaa"
        );
        request.ami = Some("ami-aaaa".into());
        assert!(policy.check_request(&request).is_ok());
    }

    /// Names are found as ids are: none may pass for an id, or for a route.
    #[test]
    fn an_instance_name_cannot_pass_for_an_id() {
        for name in
            ["i-0123456789abcdef0", "i-0abc1234", "0193a5c2-7b1e-7c3d-9f00-2a6b4c8d0e1f", "actions"]
        {
            assert!(!is_valid_instance_name(name), "{name}");
        }
        for name in ["i-web", "web-1", "i-0abc1234-1", "action", "0193a5c2"] {
            assert!(is_valid_instance_name(name), "{name}");
        }
    }

    /// The login user is what the policy says for the AMI or its owner, else what the owner
    /// or the AMI's name implies, else `ec2-user`; a policy naming a user no shell word can be
    /// is refused.
    #[test]
    fn the_login_user_follows_the_ami() {
        let named = |owner: &str, name: &str| ImageFacts {
            name: Some(name.to_string()),
            ..image(owner, "x86_64")
        };
        let rule = AmiRule::default();
        assert_eq!(login_user(&rule, &named("137112412989", "al2023-ami-2023")), "ec2-user");
        assert_eq!(login_user(&rule, &named("099720109477", "anything")), "ubuntu");
        assert_eq!(login_user(&rule, &named("136693071363", "debian-12-amd64")), "admin");
        assert_eq!(login_user(&rule, &named("123456789012", "my-ubuntu-22.04")), "ubuntu");
        assert_eq!(login_user(&rule, &named("123456789012", "golden")), "ec2-user");
        let rule = AmiRule {
            login_users: BTreeMap::from([("123456789012".into(), "ops".into())]),
            ..AmiRule::default()
        };
        assert_eq!(login_user(&rule, &named("123456789012", "my-ubuntu-22.04")), "ops");

        let mut policy = Policy::free_tier();
        policy.amis.insert(
            "*".into(),
            AmiRule {
                login_users: BTreeMap::from([("ami-1".into(), "root; rm -rf /".into())]),
                ..AmiRule::default()
            },
        );
        let problems = policy.validate().unwrap_err().join("\n");
        assert!(problems.contains("policy.amis.*.login_users.ami-1"), "{problems}");
    }

    fn image(owner: &str, arch: &str) -> ImageFacts {
        ImageFacts {
            id: "ami-1".into(),
            owner_id: owner.into(),
            owner_alias: None,
            architecture: arch.into(),
            root_device_name: Some("/dev/xvda".into()),
            name: None,
        }
    }

    fn instance_type(name: &str, arch: &str) -> InstanceTypeFacts {
        InstanceTypeFacts {
            name: name.into(),
            architectures: vec![arch.into()],
            vcpus: 2,
            burstable: true,
        }
    }

    #[test]
    fn cloud_facts_rules_report_owner_and_architecture() {
        let policy = Policy::free_tier();
        let spec = policy.check_request(&valid_request()).unwrap();
        let cases = [
            (image("137112412989", "x86_64"), instance_type("t3.micro", "x86_64"), ""),
            (
                image("137112412989", "arm64"),
                instance_type("t3.micro", "x86_64"),
                "instance_type: 't3.micro' supports x86_64 but AMI 'ami-1' is arm64; choose a matching instance type or AMI",
            ),
            (
                image("111122223333", "x86_64"),
                instance_type("t3.micro", "x86_64"),
                "ami: 'ami-1' belongs to owner 111122223333 which is not allowed in us-east-1; allowed: amazon, 137112412989, 099720109477, 136693071363",
            ),
        ];
        for (image, instance_type, expected) in cases {
            let rendered: Vec<String> = policy
                .check_image(&spec, &image, &instance_type)
                .iter()
                .map(|v| v.to_string())
                .collect();
            assert_eq!(rendered.join("\n"), expected);
        }
    }

    #[test]
    fn broken_policy_is_refused_with_every_problem() {
        let mut policy = Policy::free_tier();
        policy.default_region = "eu-north-1".into();
        policy.storage_gb = StorageRange { min: 10, max: 5, default: 8 };
        let problems = policy.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    #[test]
    fn ingress_rules_are_checked_and_caller_becomes_one_address() {
        let rule = |port: i64, protocol: Option<&str>, cidr: Option<&str>| IngressRequest {
            port: Some(port),
            protocol: protocol.map(str::to_string),
            cidr: cidr.map(str::to_string),
        };
        let mut request = valid_request();
        request.caller_ip = Some("198.51.100.7".parse().unwrap());
        request.ingress = vec![
            rule(22, None, Some("caller")),
            rule(8080, Some("udp"), Some("10.1.2.3/16")),
            rule(443, None, Some("2001:db8::1/32")),
            rule(22, Some("tcp"), Some("caller")),
        ];
        let spec = Policy::free_tier().check_request(&request).unwrap();
        let rendered: Vec<String> =
            spec.ingress.iter().map(|r| format!("{}/{} {}", r.protocol, r.port, r.cidr)).collect();
        assert_eq!(
            rendered,
            ["tcp/22 198.51.100.7/32", "udp/8080 10.1.0.0/16", "tcp/443 2001:db8::/32"],
            "a repeated rule is kept once"
        );

        request.caller_ip = Some("::ffff:192.0.2.9".parse().unwrap());
        request.ingress = vec![rule(22, None, Some("caller"))];
        let spec = Policy::free_tier().check_request(&request).unwrap();
        assert_eq!(spec.ingress[0].cidr, "192.0.2.9/32");

        request.caller_ip = None;
        request.ingress = vec![
            rule(0, None, Some("10.0.0.0/8")),
            rule(22, Some("icmp"), Some("10.0.0.0/8")),
            rule(22, None, Some("10.0.0.0/33")),
            rule(22, None, None),
            rule(22, None, Some("caller")),
        ];
        let violations = Policy::free_tier().check_request(&request).unwrap_err();
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "ingress[0].port",
                "ingress[1].protocol",
                "ingress[2].cidr",
                "ingress[3].cidr",
                "ingress[4].cidr"
            ]
        );
        assert!(violations[2].message.contains("'10.0.0.0/33' is not an address range"));
    }
}
