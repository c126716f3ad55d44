//! Stream and cache names: `tenant/namespace/name`; a bare `name` means the
//! development tenant's default namespace. The rule is the model's
//! (`felix_model::names`), shared with the control plane.

pub use felix_model::names::{
    StreamName, DEFAULT_NAMESPACE, DEV_TENANT, DLQ_SUFFIX, DLQ_SUFFIXES_MAX, NAME_PART_BYTES_MAX,
};
