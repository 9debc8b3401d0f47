# One image for every node of the docker-compose network (and for a single node).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY ledger ./ledger
COPY consensus ./consensus
COPY api ./api
COPY wallet ./wallet
COPY node ./node
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --create-home ledger
USER ledger
EXPOSE 8000 9000
ENTRYPOINT ["ledger"]
CMD ["node", "--api-host", "0.0.0.0", "--p2p-host", "0.0.0.0", "--data-dir", "/home/ledger/data"]
