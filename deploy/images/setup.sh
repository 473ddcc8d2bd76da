#!/bin/sh
# Turn a Debian bookworm root into a sandpool sandbox image for one language.
# Shared by deploy/images/*/Dockerfile (FROM debian:bookworm-slim) and
# scripts/build-images.sh (a debootstrap minbase chroot), so both produce the
# same image. Run as root inside the target root:
#
#   sh setup.sh LANG        LANG: python node go java cpp rust ruby r bash
#   sh setup.sh --packages LANG   print the Debian packages of LANG and exit
#
# Env: SANDPOOL_TAG (default sandpool/LANG:bookworm) is written to
# /etc/sandpool-image; SANDPOOL_KEEP_DEBS=1 keeps downloaded .debs.
#
# Conventions the server relies on: user sandbox 1000:1000, home
# /home/sandbox, shell /bin/sh; /sandbox 0755 owned 1000:1000; sh tar kill rm
# mkdir dd find sleep grep; /etc/sandpool-image with name=<tag> and one
# name=version line per tool. The image config (ENV LANG=C.UTF-8, PATH,
# WORKDIR /sandbox, CMD sleep infinity, per-language ENV) is set by the caller.
set -eu

packages() {
  case $1 in
    # python3-seaborn brings pandas and scipy, and, through scipy's hard
    # dependency on pythran, g++ and python3-dev (so pip can build C
    # extensions). Without seaborn, add python3-munkres so that fonttools'
    # "python3-scipy | python3-munkres" does not pull scipy.
    python) echo python3 python3-pip python3-numpy python3-matplotlib python3-seaborn ;;
    node)   echo nodejs npm esbuild ;;
    go)     echo golang-go ;;
    java)   echo default-jdk-headless ;;
    cpp)    echo g++ gcc libc6-dev ;;
    # rustc-web: Debian's current Rust (1.85 in bookworm, newer from
    # bookworm-security), kept up to date for the browsers; the plain
    # "rustc" package is 1.63, too old for much of today's code. It brings
    # gcc and binutils as its linker.
    rust)   echo rustc-web ;;
    ruby)   echo ruby ;;
    r)      echo r-base-core r-cran-ggplot2 ;;
    bash)   echo ;;
    *) echo "setup.sh: unknown language '$1'" >&2; return 2 ;;
  esac
}

if [ "${1:-}" = --packages ]; then packages "${2:?language}"; exit; fi
lang=${1:?usage: setup.sh LANG}
pkgs=$(packages "$lang")
tag=${SANDPOOL_TAG:-sandpool/$lang:bookworm}
export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8

# update-alternatives (openjdk) fails when slave man page dirs are missing.
mkdir -p /usr/share/man/man1
apt-get update -q
# procps: /usr/bin/kill, ps, pkill. ca-certificates: package installs during
# pool warm-up (pip, npm, go, gem, R) when the network is still on.
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends procps ca-certificates $pkgs

# ------------------------------------------------------------ per language
mkdir -p /usr/share/sandpool
case $lang in
  python)
    # Non-interactive default backend (Debian reads /etc/matplotlibrc).
    if grep -qE '^[#[:space:]]*backend[[:space:]]*:' /etc/matplotlibrc 2>/dev/null; then
      sed -i -E 's/^[#[:space:]]*backend[[:space:]]*:.*/backend: Agg/' /etc/matplotlibrc
    else
      echo 'backend: Agg' >>/etc/matplotlibrc
    fi
    # Prebuilt font cache (read-only). matplotlib needs a *writable*
    # MPLCONFIGDIR (the image sets /tmp/.matplotlib); seeding it with
    #   cp -r /usr/share/sandpool/mplcache/. "$MPLCONFIGDIR"/
    # saves the ~100 ms font scan of the first import.
    mkdir -p /usr/share/sandpool/mplcache
    MPLCONFIGDIR=/usr/share/sandpool/mplcache python3 -c 'import matplotlib.pyplot'
    ;;
  go)
    # Standard library compiled for CGO_ENABLED=0 (no C compiler here), used
    # read-only as GOCACHE (go1.19 runs fine on a read-only cache).
    mkdir -p /usr/share/sandpool/gocache /tmp/sandpool-go
    printf 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello") }\n' >/tmp/sandpool-go/hello.go
    (cd /tmp/sandpool-go && GOCACHE=/usr/share/sandpool/gocache GOPATH=/tmp/sandpool-go/gopath \
       CGO_ENABLED=0 HOME=/tmp/sandpool-go sh -c 'go build std && go run hello.go')
    rm -rf /tmp/sandpool-go
    ;;
  java)
    # Regenerate the default CDS archive with the classes that the
    # single-file source launcher (`java Hello.java`, javac in memory) loads:
    # first run ~340 -> ~210 ms with no extra flag.
    mkdir -p /tmp/sandpool-cds
    cat >/tmp/sandpool-cds/Hello.java <<'EOF'
import java.util.*;
import java.util.stream.*;
class Hello {
  public static void main(String[] args) throws Exception {
    List<Integer> l = new ArrayList<>(List.of(3, 1, 2));
    Map<String, Integer> m = new HashMap<>();
    m.put("x", 1);
    String s = l.stream().sorted().map(String::valueOf).collect(Collectors.joining(","));
    System.out.println(String.format("hello %s %d %.2f", s, m.get("x"), Math.sqrt(2)));
  }
}
EOF
    (cd /tmp/sandpool-cds
     java -Xshare:off -XX:DumpLoadedClassList=classes.all Hello.java
     grep -v -w Hello classes.all >classes.lst
     jsa=$(dirname "$(readlink -f /usr/bin/java)")/../lib/server/classes.jsa
     java -Xshare:dump -XX:SharedClassListFile=classes.lst -XX:SharedArchiveFile="$jsa" >dump.log 2>&1 \
       || { cat dump.log >&2; exit 1; }
     java -Xshare:on -version)
    rm -rf /tmp/sandpool-cds
    ;;
  cpp)
    # Precompiled <bits/stdc++.h> (common in generated and contest-style
    # code): 0.9 s -> 0.3 s per compile, 100 MB. g++ uses it only when the
    # flags match, so these must be the server's (server/src/lang/cpp.rs).
    h=/usr/include/$(gcc -dumpmachine)/c++/$(g++ -dumpversion)/bits/stdc++.h
    g++ -std=c++17 -O2 -pipe -x c++-header "$h" -o "$h.gch"
    chmod 0644 "$h.gch"
    ;;
esac
chmod -R a+rX,go-w /usr/share/sandpool

# ------------------------------------------------------------ user + dirs
if ! getent passwd 1000 >/dev/null; then
  if command -v useradd >/dev/null; then
    groupadd -g 1000 sandbox
    useradd -u 1000 -g 1000 -m -d /home/sandbox -s /bin/sh sandbox
  else
    echo 'sandbox:x:1000:1000::/home/sandbox:/bin/sh' >>/etc/passwd
    echo 'sandbox:x:1000:' >>/etc/group
    echo 'sandbox:!:19000:0:99999:7:::' >>/etc/shadow
  fi
fi
mkdir -p /home/sandbox /sandbox
chown 1000:1000 /home/sandbox /sandbox
chmod 0755 /home/sandbox /sandbox

# ------------------------------------------------------------ /etc/sandpool-image
{
  echo "name=$tag"
  echo "debian=$(cat /etc/debian_version)"
  for p in $pkgs; do dpkg-query -W -f='${Package}=${Version}\n' "$p"; done
  case $lang in
    python) python3 -c 'import sys, numpy, matplotlib, pandas, seaborn
print("python3=%s\nnumpy=%s\nmatplotlib=%s\npandas=%s\nseaborn=%s" % (sys.version.split()[0],
      numpy.__version__, matplotlib.__version__, pandas.__version__, seaborn.__version__))'
            echo "pip=$(python3 -m pip --version | cut -d' ' -f2)" ;;
    node)   echo "node=$(node --version)"; echo "npm=$(npm --version)"; echo "esbuild=$(esbuild --version)" ;;
    go)     echo "go=$(go env GOVERSION)" ;;
    java)   echo "java=$(java -version 2>&1 | sed -n '1s/.*"\(.*\)".*/\1/p')" ;;
    cpp)    echo "gcc=$(gcc -dumpfullversion)"; echo "g++=$(g++ -dumpfullversion)" ;;
    rust)   echo "rustc=$(rustc --version | cut -d' ' -f2)" ;;
    ruby)   echo "ruby=$(ruby -e 'print RUBY_VERSION')" ;;
    r)      echo "R=$(Rscript -e 'cat(as.character(getRversion()))')"
            echo "ggplot2=$(Rscript -e 'cat(as.character(packageVersion("ggplot2")))')" ;;
  esac
  echo "bash=$(bash -c 'echo "$BASH_VERSION"')"
} >/etc/sandpool-image
chmod 0644 /etc/sandpool-image

# ------------------------------------------------------------ cleanup
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /root/.cache
[ "${SANDPOOL_KEEP_DEBS:-0}" = 1 ] || apt-get clean
