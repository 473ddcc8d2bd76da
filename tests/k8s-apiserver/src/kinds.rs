//! The resource kinds this server stores, and their names in every form the
//! API uses (group, version, plural, kind, list kind).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    NetworkPolicy,
    Lease,
    /// discovery.k8s.io/v1. There is no endpoint controller here: whoever
    /// needs slices (a test of sandpool's peer discovery) writes them,
    /// playing the controller's part.
    EndpointSlice,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Lease,
        Kind::EndpointSlice,
    ];

    pub fn group(self) -> &'static str {
        match self {
            Kind::Pod => "",
            Kind::NetworkPolicy => "networking.k8s.io",
            Kind::Lease => "coordination.k8s.io",
            Kind::EndpointSlice => "discovery.k8s.io",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Pod => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Lease => "Lease",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    pub fn list_kind(self) -> String {
        format!("{}List", self.kind())
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Lease => "leases",
            Kind::EndpointSlice => "endpointslices",
        }
    }

    /// `pods`, `leases.coordination.k8s.io`: how messages name the resource.
    pub fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_string(),
            g => format!("{}.{g}", self.plural()),
        }
    }

    /// `Pod`, `Lease.coordination.k8s.io`: how validation messages name it.
    pub fn qualified_kind(self) -> String {
        match self.group() {
            "" => self.kind().to_string(),
            g => format!("{}.{g}", self.kind()),
        }
    }

    /// The kind served under `/api/v1/...` or `/apis/GROUP/v1/...` by plural.
    pub fn from_path(group: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.group() == group && k.plural() == plural)
    }
}
