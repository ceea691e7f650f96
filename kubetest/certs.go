package kubetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// credentials are the files the API server starts with and the secrets a
// client needs.
type credentials struct {
	cert, key string // serving key pair (files)
	certPEM   []byte // the serving certificate, which clients trust
	saKey     string // service-account signing key (file)
	tokens    string // static token file
	token     string // AdminUser's bearer token
}

// writeCredentials makes a self-signed serving certificate for 127.0.0.1
// and localhost, a service-account key and a token file with AdminUser in
// system:masters, all in dir.
func writeCredentials(dir string) (credentials, error) {
	c := credentials{
		cert:   filepath.Join(dir, "apiserver.crt"),
		key:    filepath.Join(dir, "apiserver.key"),
		saKey:  filepath.Join(dir, "service-account.key"),
		tokens: filepath.Join(dir, "tokens.csv"),
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return c, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return c, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "podnet-kubetest"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return c, err
	}
	c.certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return c, err
	}
	// Service-account tokens: RSA, the key type every Kubernetes version
	// reads from --service-account-key-file.
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return c, err
	}
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return c, err
	}
	c.token = hex.EncodeToString(secret)
	files := map[string][]byte{
		c.cert:   c.certPEM,
		c.key:    pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		c.saKey:  pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(sa)}),
		c.tokens: []byte(c.token + "," + AdminUser + "," + AdminUser + ",system:masters\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			return c, err
		}
	}
	return c, nil
}
