package broker

import (
	"errors"
	"fmt"

	"github.com/nats-io/nats-server/v2/server"
)

// tlsOptions sets in sopts the TLS the client port serves, from o's
// TLSCert, TLSKey, TLSCA and TLSVerify. Without TLSCert it serves none.
func tlsOptions(sopts *server.Options, o Options) error {
	switch {
	case o.TLSCert == "" && o.TLSKey == "" && o.TLSCA == "" && !o.TLSVerify:
		return nil
	case o.TLSCert == "" || o.TLSKey == "":
		return errors.New("broker: TLS needs both a certificate and its key (--tls-cert and --tls-key)")
	case o.TLSVerify && o.TLSCA == "":
		return errors.New("broker: verifying client certificates needs the CA that signs them (--tls-ca)")
	}
	cfg, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: o.TLSCert, KeyFile: o.TLSKey, CaFile: o.TLSCA, Verify: o.TLSVerify,
	})
	if err != nil {
		return fmt.Errorf("broker: TLS: %w", err)
	}
	sopts.TLSConfig = cfg
	sopts.TLS = true
	sopts.TLSVerify = o.TLSVerify
	sopts.TLSTimeout = 2 // seconds, NATS's default
	return nil
}
