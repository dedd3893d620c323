"""Model names, defined once: the MLflow registered models, their aliases, and the Triton repository folders."""

RETRIEVAL_MODEL = "recsys-retrieval"  # registered two-tower/SASRec retrieval model
RANKER_MODEL = "recsys-ranker"  # registered ranking model
COPY_MODEL = "recsys-copy"  # registered copy LM adapter
MODELS = (RETRIEVAL_MODEL, RANKER_MODEL)  # the recommendation models; the copy LM is promoted on its own
CHALLENGER, CHAMPION = "challenger", "champion"  # registry aliases: trained and gated / promoted and served

USER_ENCODER, RANKER = "user_encoder", "ranker"  # Triton model repository folders
REGISTERED = {USER_ENCODER: RETRIEVAL_MODEL, RANKER: RANKER_MODEL}  # repository folder → registered model
