//! The sled-backed store of cached policies, negative entries and failure records.
