"""The knowledge store: indexed files and cards, hybrid vector + text search.

Indexing appends events (``knowledge.file.indexed`` / ``.removed``); the
knowledge projection folds them into ``knowledge.db`` (chunks, an FTS5 index,
embeddings and their int8 codes), which can be rebuilt from the log. Vector
search scans the codes in memory (numpy) and rescores the best candidates
with the exact embeddings.

    async with nerve.open_log("data") as log:
        async with open_knowledge(log) as knowledge:
            await knowledge.index("path/to/repo", repo="myrepo")
            for hit in await knowledge.search("how are runs resumed", k=5):
                print(hit.path, hit.start_line, hit.snippet)
"""

from ._cache import EmbeddingCache as EmbeddingCache
from ._chunk import Card as Card
from ._chunk import Chunk as Chunk
from ._chunk import ChunkOptions as ChunkOptions
from ._chunk import chunk_code as chunk_code
from ._chunk import chunk_document as chunk_document
from ._chunk import chunk_markdown as chunk_markdown
from ._chunk import kind_of as kind_of
from ._chunk import parse_card as parse_card
from ._embed import Embedder as Embedder
from ._embed import HashingEmbedder as HashingEmbedder
from ._embed import SentenceTransformerEmbedder as SentenceTransformerEmbedder
from ._events import FILE_INDEXED as FILE_INDEXED
from ._events import FILE_REMOVED as FILE_REMOVED
from ._events import FileIndexed as FileIndexed
from ._events import FileRemoved as FileRemoved
from ._events import knowledge_stream as knowledge_stream
from ._events import register_knowledge_events as register_knowledge_events
from ._ignore import GitIgnore as GitIgnore
from ._ignore import IgnoreRules as IgnoreRules
from ._index import IndexResult as IndexResult
from ._index import index as index
from ._knowledge import Knowledge as Knowledge
from ._knowledge import KnowledgeStatistics as KnowledgeStatistics
from ._knowledge import open_knowledge as open_knowledge
from ._projection import KnowledgeProjection as KnowledgeProjection
from ._search import MODES as MODES
from ._search import Hit as Hit
from ._walk import FoundFile as FoundFile
from ._walk import Skipped as Skipped
from ._walk import WalkOptions as WalkOptions
from ._walk import walk as walk
