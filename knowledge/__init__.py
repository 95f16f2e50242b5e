"""Knowledge layer: Comprehensive Rules, card data, knowledge graph, vector index, hybrid retrieval."""
