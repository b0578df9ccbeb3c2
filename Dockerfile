# fantasize-rtc-server in a container (docs/deploy.md, "In a container").
#
#   docker build -t fantasize-rtc .
#   docker run -d --name rtc --hostname rtc -p 443:8443/tcp -p 40000:40000/udp -v rtc-data:/data \
#       fantasize-rtc --tls-self-signed --public-ip 203.0.113.10
#
# Publish the UDP port with the same number outside as inside (40000:40000): the server announces
# its port, and a client sends to that number. Arguments after the image name replace CMD and are
# added to ENTRYPOINT's flags: --public-ip is the address clients reach the host at; HTTPS comes
# from --tls-self-signed (the certificate is kept in the volume) or a mounted certificate with
# --tls-cert/--tls-key. Without arguments: --tls-self-signed.
FROM python:3.11-slim

WORKDIR /src
COPY pyproject.toml README.md ./
COPY server server
COPY static static
RUN pip install --no-cache-dir '.[fast]' && rm -rf /src

RUN useradd --system --home-dir /data --create-home rtc
USER rtc
WORKDIR /data
VOLUME /data

EXPOSE 8443/tcp 40000/udp
ENTRYPOINT ["fantasize-rtc", "serve", "--host", "0.0.0.0", "--port", "8443", \
            "--state-dir", "/data/state", "--recordings-dir", "/data/recordings", "--udp-port", "40000"]
CMD ["--tls-self-signed"]
