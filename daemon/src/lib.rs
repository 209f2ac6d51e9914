//! layerd: the REST daemon over the layer store.
