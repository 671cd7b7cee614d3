"""The agent: the turn loop (`loop`), the context window it thinks in (`context`), the mind
(`mind`), its tools (`tools`), the judges of resonance (`judges`), the embedder (`embedder`) and
corpus ingestion (`corpus`)."""
