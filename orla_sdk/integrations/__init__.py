"""orla beneath other frameworks: ``orla.serve`` for LangGraph graphs and AutoGen teams."""
