"""The knowledge base: private documents cut into chunks, embedded and indexed for search.

``chunking`` cuts a text at its structure (headings, paragraphs, sentence ends in Chinese and
English) into overlapping chunks with offsets; ``embedder`` turns texts into vectors with a
model shipped inside a wheel; ``segment`` cuts Chinese into words with jieba so BM25 matches
two-character words; ``index`` keeps chunks, their words and vectors in one SQLite file and
searches them by BM25, by vector and by both fused (reciprocal rank fusion); ``filters``
compiles OpenAI's attribute filters. Importing this package loads none of the models.

    chunks = chunk(text, size=settings.knowledge.chunk_size, overlap=...)
    embedder = load_embedder(settings.knowledge.embedding_model)
    index = Index(settings.data_dir / "knowledge.db", embedder.name)
    index.add("vs_1", "file-1", chunks, embedder.embed([c.text for c in chunks], query=False),
              {"department": "hr"})
    hits = index.search(["vs_1"], "年假怎么申请", embedder.embed([q], query=True)[0], k=5)
"""
