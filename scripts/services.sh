#!/usr/bin/env bash
# Makes sure the services BEDS's integration tests use are up on this
# machine: MariaDB on 127.0.0.1:3306 (root, no password) and RabbitMQ on
# 127.0.0.1:5672 (guest/guest) with the consistent-hash exchange plugin.
# Installs them with apt-get when absent (needs root), starts them when
# stopped, and leaves running ones alone.
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # port name seconds
  for _ in $(seq 1 "$3"); do listening "$1" && return 0; sleep 1; done
  echo "services: $2 did not start listening on 127.0.0.1:$1" >&2
  return 1
}

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { sudo_ apt-get update -qq; apt_updated=1; }
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

if ! listening 3306; then
  [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server
  sudo_ mkdir -p /run/mysqld
  sudo_ chown mysql:mysql /run/mysqld 2>/dev/null || true
  sudo_ start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
  wait_for 3306 MariaDB 60
fi
# Root must log in over TCP with no password (a fresh Debian install uses unix_socket auth).
if ! mariadb -h127.0.0.1 -uroot -e 'select 1' >/dev/null 2>&1; then
  sudo_ mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;"
fi

if ! listening 5672; then
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  sudo_ rabbitmq-server -detached
  wait_for 5672 RabbitMQ 90
  sudo_ rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
# BEDS routes each depot's commands to its partition queues with this exchange type.
if ! sudo_ rabbitmq-plugins list -e -m 2>/dev/null | grep -qx rabbitmq_consistent_hash_exchange; then
  sudo_ rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null
fi
echo "services: MariaDB 127.0.0.1:3306 and RabbitMQ 127.0.0.1:5672 are up"
