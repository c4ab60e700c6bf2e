//! gRPC adapter: converts `lattice.identity.v1` messages to domain calls and
//! [`IdentityError`]s to statuses. No decisions are made here.

use lattice_core::error::to_status;
use lattice_core::grpc::{client_ip_of, context_of, principal_of};
use lattice_proto::identity::v1 as pb;
use tonic::{Request, Response, Status};

use crate::error::IdentityError;
use crate::input::{GroupName, Membership, NewGroup, UserGroupsQuery};
use crate::service::{Authenticated, ClientInfo, Credential, GroupDetail, Identity, LoginOutcome};
use crate::store::{GroupRow, Limits, MembershipRow, OrgRow, TokenRow, UserRow};

/// The tonic service.
#[derive(Debug, Clone)]
pub struct IdentityGrpc {
    identity: Identity,
}

impl IdentityGrpc {
    /// Serve `identity`.
    pub fn new(identity: Identity) -> Self {
        Self { identity }
    }
}

fn st(e: IdentityError) -> Status {
    to_status(&e)
}

fn principal_pb(a: Authenticated) -> pb::Principal {
    pb::Principal {
        user_id: a.principal.sub,
        username: a.principal.username,
        org_id: a.principal.org_id,
        org_name: a.org_name,
        scopes: a.principal.scopes,
        auth_method: a.principal.auth.as_str().into(),
        credential_id: a.principal.credential_id,
        totp_enabled: a.totp_enabled,
        expires_at_ms: a.expires_at_ms,
    }
}

fn token_pb(t: TokenRow) -> pb::Token {
    pb::Token {
        id: t.id,
        name: t.name,
        scopes: t.scopes,
        user_id: t.user_id,
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
        last_used_at_ms: t.last_used_at_ms,
    }
}

fn user_pb(u: UserRow) -> pb::User {
    pb::User {
        id: u.id,
        username: u.username,
        org_id: u.org_id,
        scopes: u.scopes,
        totp_enabled: u.totp_enabled,
        created_at_ms: u.created_at_ms,
        locked_until_ms: u.locked_until_ms,
        disabled_at_ms: u.disabled_at_ms,
    }
}

fn group_pb(g: GroupRow, members: Vec<String>) -> pb::Group {
    pb::Group {
        id: g.id,
        org_id: g.org_id,
        name: g.name,
        description: g.description,
        member_count: g.member_count,
        members,
        created_at_ms: g.created_at_ms,
        updated_at_ms: g.updated_at_ms,
    }
}

fn group_detail_pb(d: GroupDetail) -> pb::Group {
    group_pb(d.group, d.members)
}

fn login_pb(o: LoginOutcome, cfg_idle: i64, cfg_max: i64) -> pb::LoginResponse {
    let outcome = match o {
        LoginOutcome::Session { secret, who } => {
            pb::login_response::Outcome::Session(pb::Session {
                session_secret: secret,
                principal: Some(principal_pb(who)),
                idle_timeout_s: cfg_idle,
                max_age_s: cfg_max,
            })
        }
        LoginOutcome::MfaRequired {
            mfa_token,
            expires_at_ms,
        } => pb::login_response::Outcome::Mfa(pb::MfaChallenge {
            mfa_token,
            expires_at_ms,
        }),
    };
    pb::LoginResponse {
        outcome: Some(outcome),
    }
}

#[tonic::async_trait]
impl pb::identity_service_server::IdentityService for IdentityGrpc {
    async fn login(
        &self,
        req: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let client = ClientInfo {
            ip: client_ip_of(&req).unwrap_or_default(),
            user_agent: req.get_ref().user_agent.clone(),
        };
        let m = req.into_inner();
        let out = self
            .identity
            .login(&caller, &m.username, m.password, &m.org, &client)
            .await
            .map_err(st)?;
        let (idle, max) = self.identity.session_limits_s();
        Ok(Response::new(login_pb(out, idle, max)))
    }

    async fn login_totp(
        &self,
        req: Request<pb::LoginTotpRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let client = ClientInfo {
            ip: client_ip_of(&req).unwrap_or_default(),
            user_agent: req.get_ref().user_agent.clone(),
        };
        let m = req.into_inner();
        let out = self
            .identity
            .login_totp(&caller, &m.mfa_token, &m.code, &client)
            .await
            .map_err(st)?;
        let (idle, max) = self.identity.session_limits_s();
        Ok(Response::new(login_pb(out, idle, max)))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let credential = match &req.get_ref().credential {
            Some(pb::authenticate_request::Credential::SessionSecret(s)) => Credential::Session(s),
            Some(pb::authenticate_request::Credential::BearerToken(t)) => Credential::Token(t),
            None => {
                return Err(st(IdentityError::invalid(
                    "credential",
                    "session_secret or bearer_token is required",
                )));
            }
        };
        let who = self
            .identity
            .authenticate(&caller, credential)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::AuthenticateResponse {
            principal: Some(principal_pb(who)),
        }))
    }

    async fn logout(
        &self,
        req: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let ctx = context_of(&req)?;
        self.identity.logout(&ctx).await.map_err(st)?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn enroll_totp(
        &self,
        req: Request<pb::EnrollTotpRequest>,
    ) -> Result<Response<pb::EnrollTotpResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let (secret, otpauth_uri) = self.identity.enroll_totp(&caller).await.map_err(st)?;
        Ok(Response::new(pb::EnrollTotpResponse {
            secret,
            otpauth_uri,
        }))
    }

    async fn confirm_totp(
        &self,
        req: Request<pb::ConfirmTotpRequest>,
    ) -> Result<Response<pb::ConfirmTotpResponse>, Status> {
        let ctx = context_of(&req)?;
        let codes = self
            .identity
            .confirm_totp(&ctx, &req.get_ref().code)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::ConfirmTotpResponse {
            recovery_codes: codes,
        }))
    }

    async fn disable_totp(
        &self,
        req: Request<pb::DisableTotpRequest>,
    ) -> Result<Response<pb::DisableTotpResponse>, Status> {
        let ctx = context_of(&req)?;
        let m = req.get_ref();
        self.identity
            .disable_totp(&ctx, &m.code, &m.user_id)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::DisableTotpResponse {}))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let ctx = context_of(&req)?;
        let m = req.get_ref();
        let created = self
            .identity
            .create_token(&ctx, &m.name, &m.scopes, m.expires_in_s, &m.org)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token_pb(created.token)),
            secret: created.secret,
        }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let tokens = self.identity.list_tokens(&caller).await.map_err(st)?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(token_pb).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let ctx = context_of(&req)?;
        self.identity
            .revoke_token(&ctx, &req.get_ref().id)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let ctx = context_of(&req)?;
        let m = req.into_inner();
        let user = self
            .identity
            .create_user(&ctx, &m.username, m.password, &m.scopes)
            .await
            .map_err(st)?;
        Ok(Response::new(user_pb(user)))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let users = self.identity.list_users(&caller).await.map_err(st)?;
        Ok(Response::new(pb::ListUsersResponse {
            users: users.into_iter().map(user_pb).collect(),
        }))
    }

    async fn unlock_user(
        &self,
        req: Request<pb::UnlockUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let ctx = context_of(&req)?;
        let user = self
            .identity
            .unlock_user(&ctx, &req.get_ref().user_id)
            .await
            .map_err(st)?;
        Ok(Response::new(user_pb(user)))
    }

    async fn set_password(
        &self,
        req: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        let ctx = context_of(&req)?;
        let m = req.into_inner();
        self.identity
            .set_password(&ctx, &m.user_id, m.current_password, m.new_password)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::SetPasswordResponse {}))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::Principal>, Status> {
        let caller = principal_of(&req)?.clone();
        let who = self.identity.whoami(&caller).await.map_err(st)?;
        Ok(Response::new(principal_pb(who)))
    }

    async fn fresh_mfa(
        &self,
        req: Request<pb::FreshMfaRequest>,
    ) -> Result<Response<pb::FreshMfaResponse>, Status> {
        let ctx = context_of(&req)?;
        let (fresh, totp_enabled) = self
            .identity
            .fresh_mfa(&ctx, &req.get_ref().totp_code)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::FreshMfaResponse {
            fresh,
            totp_enabled,
        }))
    }

    async fn sso_sign_in_providers(
        &self,
        req: Request<pb::SsoSignInProvidersRequest>,
    ) -> Result<Response<pb::SsoSignInProvidersResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let org = req.into_inner().org;
        let providers = self
            .identity
            .sso_sign_in_providers(&caller, &org)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::SsoSignInProvidersResponse {
            providers: providers
                .into_iter()
                .map(|(name, display_name)| pb::SsoSignInProvider { name, display_name })
                .collect(),
        }))
    }

    async fn sso_start(
        &self,
        req: Request<pb::SsoStartRequest>,
    ) -> Result<Response<pb::SsoStartResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let r = req.into_inner();
        let port = u16::try_from(r.cli_port)
            .map_err(|_| Status::invalid_argument("cli_port: not a port"))?;
        let cli = (port != 0).then_some((port, r.cli_challenge.as_str()));
        let s = self
            .identity
            .sso_start(
                &caller,
                &r.org,
                &r.provider,
                &r.redirect_url,
                &r.return_to,
                cli,
            )
            .await
            .map_err(st)?;
        Ok(Response::new(pb::SsoStartResponse {
            authorize_url: s.authorize_url,
            state: s.state,
        }))
    }

    async fn sso_callback(
        &self,
        req: Request<pb::SsoCallbackRequest>,
    ) -> Result<Response<pb::SsoCallbackResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let client = ClientInfo {
            ip: client_ip_of(&req).unwrap_or_default(),
            user_agent: req.get_ref().user_agent.clone(),
        };
        let r = req.into_inner();
        let done = self
            .identity
            .sso_callback(
                &caller,
                &r.provider,
                &r.cookie_state,
                &r.state,
                &r.code,
                &r.iss,
                &r.redirect_url,
                &client,
            )
            .await
            .map_err(st)?;
        let (idle, max) = self.identity.session_limits_s();
        Ok(Response::new(match done {
            crate::service::sso_login::SsoDone::Browser(out, return_to) => {
                pb::SsoCallbackResponse {
                    login: Some(login_pb(out, idle, max)),
                    return_to,
                    cli_redirect: String::new(),
                }
            }
            crate::service::sso_login::SsoDone::Cli(to) => pb::SsoCallbackResponse {
                login: None,
                return_to: String::new(),
                cli_redirect: to,
            },
        }))
    }

    async fn sso_cli_exchange(
        &self,
        req: Request<pb::SsoCliExchangeRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let client = ClientInfo {
            ip: client_ip_of(&req).unwrap_or_default(),
            user_agent: req.get_ref().user_agent.clone(),
        };
        let r = req.into_inner();
        let out = self
            .identity
            .sso_cli_exchange(&caller, &r.code, &r.verifier, &client)
            .await
            .map_err(st)?;
        let (idle, max) = self.identity.session_limits_s();
        Ok(Response::new(login_pb(out, idle, max)))
    }

    async fn create_sso_provider(
        &self,
        req: Request<pb::CreateSsoProviderRequest>,
    ) -> Result<Response<pb::SsoProvider>, Status> {
        let ctx = context_of(&req)?;
        let r = req.into_inner();
        let new = crate::service::sso::NewSsoProvider {
            name: r.name,
            display_name: r.display_name,
            issuer: r.issuer,
            client_id: r.client_id,
            client_secret: r.client_secret,
            scopes: r.scopes,
            username_claim: if r.username_claim.is_empty() {
                "email".into()
            } else {
                r.username_claim
            },
            require_verified_email: r.require_verified_email,
            create_users: r.create_users,
            new_user_scopes: r.new_user_scopes,
            new_user_groups: r.new_user_groups,
        };
        let p = self
            .identity
            .create_sso_provider(&ctx, new)
            .await
            .map_err(st)?;
        Ok(Response::new(sso_pb(p)))
    }

    async fn list_sso_providers(
        &self,
        req: Request<pb::ListSsoProvidersRequest>,
    ) -> Result<Response<pb::ListSsoProvidersResponse>, Status> {
        let ctx = context_of(&req)?;
        let providers = self.identity.list_sso_providers(&ctx).await.map_err(st)?;
        Ok(Response::new(pb::ListSsoProvidersResponse {
            providers: providers.into_iter().map(sso_pb).collect(),
        }))
    }

    async fn get_sso_provider(
        &self,
        req: Request<pb::SsoProviderRequest>,
    ) -> Result<Response<pb::SsoProvider>, Status> {
        let ctx = context_of(&req)?;
        let p = self
            .identity
            .get_sso_provider(&ctx, &req.get_ref().name)
            .await
            .map_err(st)?;
        Ok(Response::new(sso_pb(p)))
    }

    async fn delete_sso_provider(
        &self,
        req: Request<pb::SsoProviderRequest>,
    ) -> Result<Response<pb::DeleteSsoProviderResponse>, Status> {
        let ctx = context_of(&req)?;
        self.identity
            .delete_sso_provider(&ctx, &req.get_ref().name)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::DeleteSsoProviderResponse {}))
    }

    async fn create_group(
        &self,
        req: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        let ctx = context_of(&req)?;
        let new = NewGroup::try_from(req.into_inner()).map_err(st)?;
        let group = self.identity.create_group(&ctx, new).await.map_err(st)?;
        Ok(Response::new(group_detail_pb(group)))
    }

    async fn list_groups(
        &self,
        req: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let groups = self.identity.list_groups(&caller).await.map_err(st)?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: groups
                .into_iter()
                .map(|g| group_pb(g, Vec::new()))
                .collect(),
        }))
    }

    async fn get_group(
        &self,
        req: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        let caller = principal_of(&req)?.clone();
        let name = GroupName::try_from(req.into_inner()).map_err(st)?;
        let group = self.identity.group(&caller, &name).await.map_err(st)?;
        Ok(Response::new(group_detail_pb(group)))
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let ctx = context_of(&req)?;
        let name = GroupName::try_from(req.into_inner()).map_err(st)?;
        self.identity.delete_group(&ctx, &name).await.map_err(st)?;
        Ok(Response::new(pb::DeleteGroupResponse {}))
    }

    async fn add_group_member(
        &self,
        req: Request<pb::AddGroupMemberRequest>,
    ) -> Result<Response<pb::AddGroupMemberResponse>, Status> {
        let ctx = context_of(&req)?;
        let membership = Membership::try_from(req.into_inner()).map_err(st)?;
        let added = self
            .identity
            .add_group_member(&ctx, &membership)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::AddGroupMemberResponse { added }))
    }

    async fn remove_group_member(
        &self,
        req: Request<pb::RemoveGroupMemberRequest>,
    ) -> Result<Response<pb::RemoveGroupMemberResponse>, Status> {
        let ctx = context_of(&req)?;
        let membership = Membership::try_from(req.into_inner()).map_err(st)?;
        self.identity
            .remove_group_member(&ctx, &membership)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::RemoveGroupMemberResponse {}))
    }

    async fn user_groups(
        &self,
        req: Request<pb::UserGroupsRequest>,
    ) -> Result<Response<pb::UserGroupsResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let query = UserGroupsQuery::try_from(req.into_inner()).map_err(st)?;
        let groups = self
            .identity
            .user_groups(&caller, &query)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::UserGroupsResponse { groups }))
    }

    async fn create_org(
        &self,
        req: Request<pb::CreateOrgRequest>,
    ) -> Result<Response<pb::Org>, Status> {
        let ctx = context_of(&req)?;
        let m = req.into_inner();
        let org = self
            .identity
            .create_org(&ctx, &m.name, &m.admin_username, limits_of(m.limits))
            .await
            .map_err(st)?;
        Ok(Response::new(org_pb(org)))
    }

    async fn list_orgs(
        &self,
        req: Request<pb::ListOrgsRequest>,
    ) -> Result<Response<pb::ListOrgsResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let orgs = self.identity.list_orgs(&caller).await.map_err(st)?;
        Ok(Response::new(pb::ListOrgsResponse {
            orgs: orgs.into_iter().map(org_pb).collect(),
        }))
    }

    async fn get_org(&self, req: Request<pb::OrgRequest>) -> Result<Response<pb::Org>, Status> {
        let caller = principal_of(&req)?.clone();
        let org = self
            .identity
            .get_org(&caller, &req.get_ref().name)
            .await
            .map_err(st)?;
        Ok(Response::new(org_pb(org)))
    }

    async fn update_org(
        &self,
        req: Request<pb::UpdateOrgRequest>,
    ) -> Result<Response<pb::Org>, Status> {
        let ctx = context_of(&req)?;
        let m = req.into_inner();
        let org = self
            .identity
            .update_org(
                &ctx,
                &m.name,
                &m.new_name,
                m.limits.map(|l| limits_of(Some(l))),
            )
            .await
            .map_err(st)?;
        Ok(Response::new(org_pb(org)))
    }

    async fn begin_delete_org(
        &self,
        req: Request<pb::OrgRequest>,
    ) -> Result<Response<pb::Org>, Status> {
        let ctx = context_of(&req)?;
        let org = self
            .identity
            .begin_delete_org(&ctx, &req.get_ref().name)
            .await
            .map_err(st)?;
        Ok(Response::new(org_pb(org)))
    }

    async fn finish_delete_org(
        &self,
        req: Request<pb::OrgRequest>,
    ) -> Result<Response<pb::FinishDeleteOrgResponse>, Status> {
        let ctx = context_of(&req)?;
        let removed = self
            .identity
            .finish_delete_org(&ctx, &req.get_ref().name)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::FinishDeleteOrgResponse {
            removed: removed.into_iter().collect(),
        }))
    }

    async fn org_usage(
        &self,
        req: Request<pb::OrgRequest>,
    ) -> Result<Response<pb::OrgUsageResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let (org, counts) = self
            .identity
            .org_usage(&caller, &req.get_ref().name)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::OrgUsageResponse {
            org_id: org.id.clone(),
            counts: counts.into_iter().collect(),
            org: Some(org_pb(org)),
        }))
    }

    async fn org_limits(
        &self,
        req: Request<pb::OrgLimitsRequest>,
    ) -> Result<Response<pb::Limits>, Status> {
        let caller = principal_of(&req)?.clone();
        let limits = self
            .identity
            .org_limits(&caller, &req.get_ref().org_id)
            .await
            .map_err(st)?;
        Ok(Response::new(limits_pb(limits)))
    }

    async fn my_orgs(
        &self,
        req: Request<pb::MyOrgsRequest>,
    ) -> Result<Response<pb::MyOrgsResponse>, Status> {
        let caller = principal_of(&req)?.clone();
        let orgs = self.identity.my_orgs(&caller).await.map_err(st)?;
        Ok(Response::new(pb::MyOrgsResponse {
            memberships: orgs
                .into_iter()
                .map(|m| membership_pb(m.membership, m.current))
                .collect(),
        }))
    }

    async fn create_invitation(
        &self,
        req: Request<pb::CreateInvitationRequest>,
    ) -> Result<Response<pb::CreateInvitationResponse>, Status> {
        let ctx = context_of(&req)?;
        let m = req.into_inner();
        let inv = self
            .identity
            .create_invitation(&ctx, &m.username, &m.scopes, m.expires_in_s)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::CreateInvitationResponse {
            id: inv.id,
            code: inv.code,
            expires_at_ms: inv.expires_at_ms,
        }))
    }

    async fn accept_invitation(
        &self,
        req: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::Membership>, Status> {
        let ctx = context_of(&req)?;
        let m = self
            .identity
            .accept_invitation(&ctx, &req.get_ref().code)
            .await
            .map_err(st)?;
        Ok(Response::new(membership_pb(m, false)))
    }

    async fn set_member_scopes(
        &self,
        req: Request<pb::SetMemberScopesRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let ctx = context_of(&req)?;
        let m = req.into_inner();
        let user = self
            .identity
            .set_member_scopes(&ctx, &m.user_id, &m.scopes)
            .await
            .map_err(st)?;
        Ok(Response::new(user_pb(user)))
    }

    async fn set_user_disabled(
        &self,
        req: Request<pb::SetUserDisabledRequest>,
    ) -> Result<Response<pb::User>, Status> {
        let ctx = context_of(&req)?;
        let m = req.into_inner();
        let user = self
            .identity
            .set_user_disabled(&ctx, &m.user_id, m.disabled)
            .await
            .map_err(st)?;
        Ok(Response::new(user_pb(user)))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let ctx = context_of(&req)?;
        self.identity
            .remove_member(&ctx, &req.get_ref().user_id)
            .await
            .map_err(st)?;
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }
}

fn limits_pb(l: Limits) -> pb::Limits {
    pb::Limits {
        max_buckets: l.max_buckets,
        max_stored_bytes: l.max_stored_bytes,
        max_nodes: l.max_nodes,
        max_tokens: l.max_tokens,
    }
}

fn limits_of(l: Option<pb::Limits>) -> Limits {
    l.map(|l| Limits {
        max_buckets: l.max_buckets,
        max_stored_bytes: l.max_stored_bytes,
        max_nodes: l.max_nodes,
        max_tokens: l.max_tokens,
    })
    .unwrap_or_default()
}

fn org_pb(o: OrgRow) -> pb::Org {
    pb::Org {
        id: o.id,
        name: o.name,
        created_at_ms: o.created_at_ms,
        deleting_at_ms: o.deleting_at_ms,
        limits: Some(limits_pb(o.limits)),
        member_count: o.member_count,
    }
}

fn membership_pb(m: MembershipRow, current: bool) -> pb::Membership {
    pb::Membership {
        org_id: m.org_id,
        org_name: m.org_name,
        scopes: m.scopes,
        home: m.home,
        current,
    }
}

fn sso_pb(p: crate::service::sso::SsoProvider) -> pb::SsoProvider {
    pb::SsoProvider {
        id: p.id,
        name: p.name,
        display_name: p.display_name,
        issuer: p.issuer,
        client_id: p.client_id,
        scopes: p.scopes,
        username_claim: p.username_claim,
        require_verified_email: p.require_verified_email,
        create_users: p.create_users,
        created_at_ms: p.created_at_ms,
        created_by: p.created_by,
        new_user_scopes: p.new_user_scopes,
        new_user_groups: p.new_user_groups,
    }
}
